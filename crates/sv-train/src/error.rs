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
    /// The model name is not one this crate knows.
    #[error("unknown model `{name}` (known: {known})")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
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
    /// A JSON file (statistics, metrics) is malformed.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The batch source failed (the data pipeline reported an error).
    #[error("data: {0}")]
    Data(String),
    /// A background thread panicked or went away.
    #[error("background thread `{0}` stopped unexpectedly")]
    Thread(&'static str),
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
