//! One module per top-level command; each exposes `Args`/`Cmd` and `run`, which
//! returns the process exit code. The libtorch commands live in `src/torch/` (the
//! `supervision-torch` binary).

pub mod bench;
pub mod model;
pub mod pca;
pub mod plot;
pub mod shard;
pub mod synth;
