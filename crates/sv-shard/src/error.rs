//! The shard crate's error: every variant names the file (and record) a person must
//! look at, and what was expected against what was found.

use std::path::PathBuf;

/// What went wrong reading or writing a shard dataset.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// An operating-system error on a file.
    #[error("{path}: {op} failed")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`open`, `read`, `write`, `rename`, ...).
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a regular file (a directory, a FIFO, a device) where a
    /// shard or the manifest should be.
    #[error("{path} is {kind}, not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What is there, in words.
        kind: &'static str,
    },
    /// A file larger than its kind may be (a manifest of gigabytes).
    #[error("{path} is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The most accepted.
        limit: u64,
    },
    /// The manifest is missing, unparsable or inconsistent.
    #[error("{path}: invalid manifest: {what}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The manifest lists a shard that is not there.
    #[error("{path}: shard listed in the manifest is missing")]
    MissingShard {
        /// Where the shard was expected.
        path: PathBuf,
    },
    /// A shard's header, index or length is wrong.
    #[error("{path}: corrupt shard: {what}")]
    Corrupt {
        /// The shard file.
        path: PathBuf,
        /// What is wrong, with expected and found values.
        what: String,
    },
    /// One record is wrong (checksum, bounds, undecodable payload).
    #[error("{path}: record {record} (dataset index {index}): {what}")]
    Record {
        /// The shard file.
        path: PathBuf,
        /// Index of the record inside its shard.
        record: usize,
        /// Index of the record in the dataset.
        index: usize,
        /// What is wrong.
        what: String,
    },
    /// A record index past the end of the dataset.
    #[error("record index {index} is out of range: the dataset has {len} records")]
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// Records in the dataset.
        len: usize,
    },
    /// The caller passed something the format cannot hold (wrong buffer size, too
    /// many records for one shard, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
}

impl From<sv_core::fs::FsError> for ShardError {
    fn from(e: sv_core::fs::FsError) -> Self {
        use sv_core::fs::FsError;
        match e {
            FsError::Io { path, op, source } => ShardError::Io { path, op, source },
            FsError::NotAFile { path, kind } => ShardError::NotAFile { path, kind },
            FsError::TooLarge { path, size, limit } => ShardError::TooLarge { path, size, limit },
        }
    }
}

impl ShardError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        ShardError::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        ShardError::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }
}
