//! One module per top-level command; each exposes `Args`/`Cmd` and `run`, which
//! returns the process exit code.

pub mod pca;
pub mod shard;
pub mod synth;
