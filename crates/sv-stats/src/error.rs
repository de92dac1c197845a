//! The statistics crate's error: each variant names the file, record or input that
//! is wrong and what was expected.

use std::path::PathBuf;

/// What went wrong computing, writing or reading dataset statistics.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The dataset (or the sample drawn from it) holds no image.
    #[error("{dir}: the dataset holds no records; statistics need at least one image")]
    Empty {
        /// The dataset directory.
        dir: PathBuf,
    },
    /// Reading the shard dataset failed (missing or damaged shard, checksum mismatch,
    /// undecodable record); the cause names the file and record.
    #[error("reading the shard dataset {dir}")]
    Dataset {
        /// The dataset directory.
        dir: PathBuf,
        /// The shard error, naming the file and record.
        #[source]
        source: sv_shard::ShardError,
    },
    /// An image buffer whose length does not match the accumulator's geometry.
    #[error("image buffer is {found} bytes, expected {expected} ({side}x{side}x3)")]
    ImageSize {
        /// The accumulator's side.
        side: u32,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// Two accumulators of different geometry cannot be merged.
    #[error("cannot merge statistics of {left}x{left} images with {right}x{right} images")]
    GeometryMismatch {
        /// Side of the accumulator merged into.
        left: u32,
        /// Side of the other accumulator.
        right: u32,
    },
    /// A caller passed something that cannot describe images (a zero side, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A limit of the accumulator or of a file format was exceeded (not bad input).
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// A worker thread panicked; this is a bug, not bad input.
    #[error("statistics worker {worker} panicked")]
    WorkerPanic {
        /// Index of the worker.
        worker: usize,
    },
    /// An operating-system error on a file.
    #[error("{path}: {op} failed")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done (`create`, `read`, `write`, `rename`).
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a regular file (a folder, a FIFO) where a file should be.
    #[error("{path} is {kind}, not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What is there, in words.
        kind: &'static str,
    },
    /// A statistics JSON file that does not parse.
    #[error("{path}: not a valid statistics file")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error (line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A file that parses but holds something this version cannot use (wrong format
    /// name or version, wrong shape or dtype, non-finite values).
    #[error("{path}: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with expected and found values.
        what: String,
    },
}

impl From<sv_core::fs::FsError> for StatsError {
    fn from(e: sv_core::fs::FsError) -> Self {
        use sv_core::fs::FsError;
        match e {
            FsError::Io { path, op, source } => StatsError::Io { path, op, source },
            FsError::NotAFile { path, kind } => StatsError::NotAFile { path, kind },
            FsError::TooLarge { path, size, limit } => StatsError::Limit(format!(
                "{} is {size} bytes, more than the {limit} bytes a statistics file may be",
                path.display()
            )),
        }
    }
}

impl StatsError {
    pub(crate) fn format(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        StatsError::Format {
            path: path.into(),
            what: what.into(),
        }
    }
}
