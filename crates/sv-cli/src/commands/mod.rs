//! One module per top-level command; each exposes `Args`/`Cmd` and `run`, which
//! returns the process exit code.

pub mod bench;
#[cfg(feature = "train")]
pub mod eval;
#[cfg(feature = "train")]
pub mod model;
pub mod pca;
pub mod plot;
#[cfg(feature = "train")]
pub mod predict;
pub mod shard;
pub mod synth;
#[cfg(feature = "train")]
pub mod train;
