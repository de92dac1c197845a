//! The flags of data-parallel training, a block of `supervision train`'s flags.

use super::train::choice;
use super::{MAX_BUCKET_MIB, MAX_TIMEOUT_SECS};
use crate::args::count_up_to;

choice! {
    /// `--collective`: how gradients are averaged.
    Collective { Auto = "auto", Nccl = "nccl" }
}

/// Flags of data-parallel training (a block of `supervision train`'s flags).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Data parallel (one process per GPU, NCCL)")]
pub struct DistArgs {
    /// Start N ranks on this machine, one per GPU (cuda:0 .. cuda:N-1), and stop them
    /// all when one fails, as `torchrun --nproc-per-node N` does. Leave it out under
    /// torchrun or srun: they start the ranks, and each reads its place from their
    /// environment (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, or
    /// SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and the node list).
    #[arg(long, value_name = "N", value_parser = crate::args::at_least_one::<usize>)]
    pub nproc_per_node: Option<usize>,
    /// `auto`: NCCL when the job has more than one rank, nothing for one; `nccl`: NCCL
    /// even for a single rank (to check or measure that path).
    #[arg(long, value_enum, default_value = "auto", value_name = "auto|nccl")]
    pub collective: Collective,
    /// Seconds every rank may take to reach the rendezvous before the missing ones are
    /// named.
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = count_up_to(MAX_TIMEOUT_SECS))]
    pub rendezvous_timeout: u64,
    /// Seconds without a heartbeat (sent every second) after which a rank counts as
    /// dead: the others stop with an error naming it.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = count_up_to(MAX_TIMEOUT_SECS))]
    pub heartbeat_timeout: u64,
    /// Seconds a rank may stay behind the others' step (alive but stuck, e.g. on
    /// storage) before they stop with an error naming it.
    #[arg(long, default_value_t = 300, value_name = "SECS", value_parser = count_up_to(MAX_TIMEOUT_SECS))]
    pub stall_timeout: u64,
    /// Largest gradient all-reduce bucket, in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB", value_parser = count_up_to(MAX_BUCKET_MIB))]
    pub bucket_mib: usize,
    /// Also compare every rank's weights with rank 0's (checksums) every N steps; 0:
    /// only before each checkpoint.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub check_replicas_every: u64,
}
