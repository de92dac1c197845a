//! Turns an ImageNet folder tree into a SuperVision shard dataset, as the paper
//! prepared its data: every image decoded, its shorter side resized to 256, the
//! central 256x256 kept.
//!
//! - [`inputs`] finds the images and labels (class-folder tree, or a flat folder with
//!   Kaggle's `LOC_val_solution.csv` or `filename wnid` lines).
//! - [`build()`] decodes them on all cores and writes shards in input order:
//!   byte-identical output whatever the worker count, bounded memory, resumable after
//!   a kill, and bad files skipped and reported rather than fatal.
#![warn(missing_docs)]

mod build;
pub mod inputs;

use std::path::PathBuf;

pub use build::{
    BUILD_FILE, BuildConfig, BuildSummary, JOURNAL_FILE, Progress, REJECTS_FILE, Reject, build,
    read_rejects,
};
pub use inputs::{InputSpec, Inputs, discover};

/// Why a build could not be done.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An operating-system error on a file or folder.
    #[error("{path}: {op} failed")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The inputs or settings cannot be used as given.
    #[error("{0}")]
    Input(String),
    /// `--strict`: an input file could not be used.
    #[error("{path}: rejected (strict mode): {reason}")]
    Rejected {
        /// The input file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing the dataset failed.
    #[error(transparent)]
    Shard(#[from] sv_shard::ShardError),
}
