//! The flags of `train`, `eval` and `predict`, defined here in the libtorch-free part
//! of sv-cli so that both executables know them: `supervision-torch` parses them
//! ([`TorchCommand`]), and `supervision`, which hands those commands over, describes
//! them in its shell completions and manual page ([`reference`]).

pub mod dist;
pub mod eval;
pub mod numbers;
pub mod predict;
pub mod reference;
pub mod train;

pub use dist::{Collective, DistArgs};
pub use eval::EvalArgs;
pub use predict::PredictArgs;
pub use train::{Given, TrainArgs};

/// The commands `supervision-torch` runs.
#[derive(clap::Subcommand, Debug)]
pub enum TorchCommand {
    /// Train AlexNet on shard sets (libtorch; CPU or CUDA).
    Train(Box<TrainArgs>),
    /// Top-1/top-5 error of a checkpoint on a validation shard set (libtorch).
    Eval(EvalArgs),
    /// Top-5 classes of image files under a checkpoint (libtorch).
    Predict(PredictArgs),
}

/// Largest gradient all-reduce bucket (`--bucket-mib`): 16 GiB, far above the 233 MiB of
/// AlexNet's gradients, and small enough that the byte count fits any usize.
pub const MAX_BUCKET_MIB: usize = 16 << 10;

/// Longest timeout of the data-parallel flags (`--rendezvous-timeout`,
/// `--heartbeat-timeout`, `--stall-timeout`): a week, in seconds. The watchdog adds
/// margins to them, which must not overflow.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Largest side of the square an image is reduced to (`predict --size`): the largest a
/// shard set stores.
pub const MAX_SIDE: u32 = 16384;

/// Most ranks of a data-parallel job, read from the launcher's environment
/// (`WORLD_SIZE`, `SLURM_NTASKS`): 65,536 GPUs, beyond the largest training jobs run.
pub const MAX_WORLD_SIZE: usize = 1 << 16;
