//! Turns an ImageNet folder tree into a SuperVision shard dataset, as the paper
//! prepared its data: every image decoded, its shorter side resized to 256, the
//! central 256x256 kept.
//!
//! - [`inputs`] finds the images and labels (class-folder tree, or a flat folder with
//!   Kaggle's `LOC_val_solution.csv` or `filename wnid` lines), and accounts for every
//!   other entry as a reject or as ignored, with the reason.
//! - [`build()`] decodes them on all cores and writes shards in input order:
//!   byte-identical output whatever the worker count, bounded memory, resumable after
//!   a kill, bad files skipped and reported rather than fatal, one build at a time per
//!   output folder (see [`lock`]), and a repeated build redoes exactly the shards
//!   whose inputs changed (see the `journal` module).
#![warn(missing_docs)]

mod archive;
mod build;
pub mod devkit;
mod files;
pub mod hub;
pub mod inputs;
mod journal;
pub mod lock;
pub mod mat;
mod merge;
mod read;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use build::{
    BUILD_FILE, BuildConfig, BuildSummary, DEFAULT_MAX_REJECT_FRACTION, JOURNAL_FILE,
    MAX_SHARD_BYTES, MAX_WORKERS, Progress, REJECTS_FILE, build,
};
pub use files::read_rejects;
pub use inputs::{Ignored, InputSpec, Inputs, discover};
pub use lock::LOCK_FILE;
pub use merge::{MergeConfig, MergeSummary, merge};
pub use read::MAX_INPUT_BYTES;

/// One input file that was skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// Path relative to the input folder.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Which part of a build split across machines: part `index` (counting from 0) of
/// `count` contiguous slices of the record order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// This part, `0..count`.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl Part {
    /// Parse `K/N`.
    pub fn parse(text: &str) -> Result<Part, String> {
        let (k, n) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not K/N (for example 0/4)"))?;
        let num = |s: &str, what: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{text}`: {what} `{s}` is not a whole number"))
        };
        let part = Part {
            index: num(k, "K")?,
            count: num(n, "N")?,
        };
        part.check().map_err(|e| e.to_string())?;
        Ok(part)
    }

    fn check(&self) -> Result<(), BuildError> {
        if self.count == 0 || self.index >= self.count {
            return Err(BuildError::Input(format!(
                "part {}/{} does not exist: parts are numbered 0 to N-1, and N is at least 1",
                self.index, self.count
            )));
        }
        Ok(())
    }

    /// The slice of `n` images this part builds.
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        let at = |k: usize| (k as u128 * n as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }
}

/// What a part build records about its place in the whole (in `build.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// The part, from 0.
    pub index: usize,
    /// Of how many.
    pub count: usize,
    /// Its first image in the whole build's order.
    pub first_image: usize,
    /// Images in its slice.
    pub images: usize,
    /// Images in the whole build.
    pub total_images: usize,
    /// Digest of the whole input list (paths, labels, sizes, times).
    pub inputs: String,
    /// Fingerprint of the settings and class list, the same for every part.
    pub settings: String,
}

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
    /// Another build is writing the same output folder.
    #[error(
        "{dir} is being written by another build ({holder}); wait for it to finish, or stop it"
    )]
    Locked {
        /// The output folder.
        dir: PathBuf,
        /// Who holds the lock, in words (pid, host, command).
        holder: String,
    },
    /// The output folder holds something the build would have to replace; forcing
    /// the build replaces it (files of the build's own only).
    #[error("{dir} {holds}")]
    Occupied {
        /// The output folder.
        dir: PathBuf,
        /// What it holds.
        holds: Occupant,
    },
    /// The inputs cannot be used as given.
    #[error("{0}")]
    Input(String),
    /// A setting of [`BuildConfig`] is outside what a build accepts (a limit, not bad
    /// input): the CLI maps `setting` to its flag.
    #[error("{problem}")]
    Setting {
        /// The [`BuildConfig`] field: `workers`, `max_shard_bytes`,
        /// `max_reject_fraction`, `jpeg_quality` or `side`.
        setting: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// `--strict`: an input file could not be used.
    #[error("{path}: rejected (strict mode): {reason}")]
    Rejected {
        /// The input file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The input holds no usable image: the build would be an empty dataset.
    #[error(
        "{input}: no usable images ({rejects} rejected, {ignored} ignored{}): an empty \
         dataset is not built",
        first.as_ref().map(|f| format!("; the first: {f}")).unwrap_or_default()
    )]
    Empty {
        /// The input.
        input: PathBuf,
        /// Entries rejected.
        rejects: usize,
        /// Entries ignored.
        ignored: usize,
        /// The first reject (or ignored entry), `path: reason`.
        first: Option<String>,
    },
    /// More inputs were rejected than [`BuildConfig::max_reject_fraction`] allows.
    #[error(
        "{rejected} of {total} inputs rejected, more than the {}% allowed (the first: {}: \
         {}): so many rejects mean the wrong folder, layout or labels, not a few bad files",
        (limit * 1e4).round() / 1e2, first.path, first.reason
    )]
    TooManyRejects {
        /// Rejects so far.
        rejected: usize,
        /// Inputs of the build.
        total: usize,
        /// The fraction allowed.
        limit: f64,
        /// The first reject.
        first: Reject,
    },
    /// An archive could no longer be read where its listing said (it was cut or
    /// changed while the build read it): the build stops rather than reject the rest.
    #[error(
        "{path}: {reason} (member {member}): the archive was cut or changed after it was \
         listed; the build stopped (run it again once the archive is whole: it resumes)"
    )]
    Damaged {
        /// The archive.
        path: PathBuf,
        /// The member being read.
        member: String,
        /// What failed.
        reason: String,
    },
    /// The folders given to a merge are not each part of one finished build, once.
    #[error("{message}")]
    Parts {
        /// Which condition, for callers that tell them apart.
        problem: PartProblem,
        /// In words, naming the folders.
        message: String,
    },
    /// A shard's bytes are not what its manifest says (found while merging).
    #[error(
        "{path}: {reason}: the shard is damaged (`shard verify` names the record); rebuild \
         its part"
    )]
    ShardDamaged {
        /// The shard.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// Writing the dataset failed.
    #[error(transparent)]
    Shard(#[from] sv_shard::ShardError),
}

impl BuildError {
    /// The one way an I/O error on a file or folder becomes a [`BuildError`]:
    /// `.map_err(BuildError::io(path, "read"))`.
    pub(crate) fn io(
        path: &std::path::Path,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> BuildError + use<> {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, op, source }
    }
}

/// Why the folders given to a merge cannot be merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartProblem {
    /// A folder, or a part number, is given twice.
    GivenTwice,
    /// A part of the build is not among those given.
    Missing,
    /// A part was built from other inputs, settings or part count than the first.
    OtherBuild,
    /// A folder is not a finished part build (no part number, no build record).
    NotAPart,
    /// A part's build is unfinished.
    Unfinished,
    /// A part's slice does not start where the one before it ends.
    Misplaced,
}

/// What an output folder holds that keeps a build from writing there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occupant {
    /// An interrupted build with other inputs or settings.
    InterruptedBuild,
    /// A dataset built from other inputs or settings.
    OtherDataset,
    /// Files that are not a dataset.
    OtherFiles,
}

impl std::fmt::Display for Occupant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Occupant::InterruptedBuild => {
                "holds an interrupted build with other inputs or settings (rerun that build \
                 with those to finish it)"
            }
            Occupant::OtherDataset => "already holds a dataset built from other inputs or settings",
            Occupant::OtherFiles => "is not empty and holds no dataset (choose an empty folder)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_order_once() {
        for n in [0, 1, 7, 10, 1000] {
            for count in 1..6 {
                let mut next = 0;
                for index in 0..count {
                    let r = Part { index, count }.range(n);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
        assert!(Part::parse("3/3").unwrap_err().contains("0 to N-1"));
        assert!(Part::parse("1/0").is_err());
        assert!(Part::parse("x/2").unwrap_err().contains("whole number"));
        assert_eq!(Part::parse("2/4").unwrap(), Part { index: 2, count: 4 });
    }
}
