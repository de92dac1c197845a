//! The crate's error type: each variant names the file, model or tensor involved.

use std::path::PathBuf;

/// Everything that can go wrong while building, training, saving or evaluating a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A libtorch operation failed (shape mismatch, out of memory, no CUDA driver).
    #[error("libtorch: {context}")]
    Torch {
        /// What was being done.
        context: String,
        /// The libtorch error.
        #[source]
        source: tch::TchError,
    },
    /// A CUDA stream or event operation of the sv-c10 shim failed.
    #[error("{context}")]
    C10 {
        /// What was being done.
        context: String,
        /// The shim's error.
        #[source]
        source: sv_c10::C10Error,
    },
    /// The model name is unknown or its layers do not fit (the cause says which).
    #[error(transparent)]
    Model(#[from] sv_model::ModelError),
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Reading or writing a file failed (the cause is the source, not repeated).
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is malformed or does not match the model.
    #[error("checkpoint {path}: {what}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// Writing a file atomically failed (the path and step are in the source).
    #[error(transparent)]
    File(#[from] sv_core::fs::FsError),
    /// A JSON file (statistics, metrics) is malformed (the cause is the source).
    #[error("{path}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The data pipeline reported an error (a record it could not read, a worker that
    /// panicked, ...).
    #[error("training data pipeline")]
    Pipeline(#[source] sv_pipeline::Error),
    /// A shard set could not be read (record index, shard and cause in the source).
    #[error("reading {}", dataset.display())]
    Shard {
        /// The shard set's directory.
        dataset: PathBuf,
        /// The reader's error.
        #[source]
        source: sv_shard::ShardError,
    },
    /// A batch does not hold what its sizes say (lengths, crop windows).
    #[error("batch {index} of epoch {epoch}: {what}")]
    Batch {
        /// Epoch of the batch.
        epoch: u64,
        /// Index of the batch within its epoch.
        index: u64,
        /// What is wrong.
        what: String,
    },
    /// The data source gave a batch other than the next one.
    #[error(
        "expected batch {want_index} of epoch {want_epoch}, the source gave batch {index} of epoch {epoch}"
    )]
    OutOfOrder {
        /// Epoch the trainer expected.
        want_epoch: u64,
        /// Batch the trainer expected.
        want_index: u64,
        /// Epoch of the batch given.
        epoch: u64,
        /// Index of the batch given.
        index: u64,
    },
    /// The data source ended an epoch early.
    #[error("epoch {epoch} ended after {got} of {want} batches")]
    ShortEpoch {
        /// The epoch.
        epoch: u64,
        /// Batches delivered.
        got: u64,
        /// Batches per epoch.
        want: u64,
    },
    /// The training set holds fewer images than one batch (for this rank).
    #[error("the training set holds fewer images than one batch")]
    EmptyEpoch,
    /// A validation set holds no image to score.
    #[error("{}: no validation images", dataset.display())]
    EmptyValidation {
        /// The shard set's directory.
        dataset: PathBuf,
    },
    /// Another process trains in the output folder (see [`crate::runlock`]).
    #[error(
        "{} is in use by another training run ({holder}); wait for it to end, or choose another --out",
        dir.display()
    )]
    Locked {
        /// The output folder.
        dir: std::path::PathBuf,
        /// Who holds the lock, in words.
        holder: String,
    },
    /// A background thread panicked or went away.
    #[error("background thread `{0}` stopped unexpectedly")]
    Thread(&'static str),
    /// Data-parallel training: another rank failed, the ranks disagree, a collective
    /// failed, or a checkpoint's world size differs (the rank and cause in words).
    #[error(transparent)]
    Dist(#[from] sv_dist::DistError),
    /// The loss became NaN or infinite.
    #[error("loss is not finite at step {step} ({loss})")]
    Diverged {
        /// Global step.
        step: u64,
        /// The loss value.
        loss: f64,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Adds a context to a libtorch result.
pub(crate) trait TorchContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> TorchContext<T> for std::result::Result<T, tch::TchError> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| TrainError::Torch {
            context: context(),
            source,
        })
    }
}

/// Wraps an I/O error with its path.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
