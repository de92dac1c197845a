//! End-to-end tests: each module drives the real `supervision` binary on data it
//! generates (synthetic images, generated shards) and checks behaviour, not speed.
//!
//! This is sv-cli's test target `cli` (declared in crates/sv-cli/Cargo.toml, kept here
//! at the top level beside the helpers): cargo builds the binaries it tests first and
//! hands over their paths (`CARGO_BIN_EXE_*`). Modules gated on `train` need sv-cli's
//! `train` feature (on by default), which builds `supervision-torch`.
//!
//! ```text
//! cargo test -p sv-cli --test cli [FILTER]
//! ```

// tests/lib.rs's helpers, named `sv_tests::...` in every module (the crate they formed
// before they moved into this target).
extern crate self as sv_tests;
#[path = "../lib.rs"]
mod helpers;
pub use helpers::*;

mod archives;
mod bench;
#[cfg(feature = "train")]
mod dist;
mod hub;
mod outputs;
mod pca;
mod reference;
mod shard;
mod startup;
#[cfg(feature = "train")]
mod stop;
mod synth;
#[cfg(feature = "train")]
mod train;
#[cfg(feature = "train")]
mod train_guards;
mod verify;
#[cfg(feature = "train")]
mod version;
