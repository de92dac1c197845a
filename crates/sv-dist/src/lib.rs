//! sv-dist: data-parallel training over many GPUs, the way PyTorch jobs run.
//!
//! - [`launch`]: this process's rank, world size, local rank and rendezvous address
//!   from torchrun's or Slurm's environment (including Slurm host lists).
//! - [`supervise`]: `--nproc-per-node N`: start N local ranks, stop them all when one
//!   fails, and name it.
//! - [`collective`]: the [`Collective`] trait (all-reduce, broadcast, barrier) and what
//!   training builds on it: bucketed gradient averaging on flat buffers, the initial
//!   broadcast checked by checksums, reduced validation counts, the world-size check
//!   of `--resume`.
//! - [`nccl`]: the product implementation: c10d's ProcessGroupNCCL over the TCPStore
//!   rendezvous (libtorch's own, through sv-c10), with [`watchdog`] heartbeats that name
//!   a rank that died, hung or failed.
//! - `testing` (the `testing` cargo feature, for tests only): a TEST DOUBLE of the
//!   trait over threads in one process, so the multi-rank logic is tested on machines
//!   without GPUs. Never built into the CLI.
#![warn(missing_docs)]

pub mod collective;
mod error;
pub mod launch;
pub mod nccl;
pub mod supervise;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watchdog;

pub use collective::{Collective, ReduceOp, Solo};
pub use error::{DistError, Result};
pub use launch::{Launcher, RankEnv};
