//! Rust errors as Python exceptions. The message is the Rust error with its whole
//! chain of causes (`a: b: c`), so the file, shard and record it names reach the
//! Python user; the type says what kind of failure it is:
//!
//! - a path that does not exist (anywhere in the chain): `FileNotFoundError`; no
//!   permission: `PermissionError`;
//! - a damaged or inconsistent dataset (manifest, shard header or index, a record's
//!   checksum or payload): [`ShardError`], a subclass of `OSError`;
//! - a setting that cannot work: `ValueError`; a record index past the end:
//!   `IndexError`;
//! - anything else (a worker panic, a runtime that did not start): `RuntimeError`.

use std::error::Error as StdError;
use std::io::ErrorKind;

use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::{
    PyFileNotFoundError, PyIndexError, PyOSError, PyPermissionError, PyRuntimeError, PyValueError,
};

create_exception!(
    supervision,
    ShardError,
    PyOSError,
    "A shard dataset is damaged or inconsistent: a manifest that does not parse or whose \
checksum fails, a shard whose header, index or length is wrong, a record whose CRC-32 \
does not match or whose JPEG does not decode. The message names the file (and the \
record). A subclass of OSError."
);

/// `e` and its causes, `": "`-separated, each said once (a cause whose text the
/// outer message already contains is not repeated).
pub fn message(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// The first operating-system error kind in the chain.
fn io_kind(e: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = c.source();
    }
    None
}

/// The first shard error in the chain.
fn shard_source<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a sv_shard::ShardError> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(s) = c.downcast_ref::<sv_shard::ShardError>() {
            return Some(s);
        }
        cur = c.source();
    }
    None
}

/// An OS error by kind, or `None` when the kind has no better type than the caller's.
fn by_io_kind(kind: Option<ErrorKind>, msg: &str) -> Option<PyErr> {
    match kind? {
        ErrorKind::NotFound => Some(PyFileNotFoundError::new_err(msg.to_string())),
        ErrorKind::PermissionDenied => Some(PyPermissionError::new_err(msg.to_string())),
        _ => None,
    }
}

/// The exception for a shard error found in the chain of `outer` (whose whole chain
/// makes the message).
fn from_shard(s: &sv_shard::ShardError, msg: String) -> PyErr {
    use sv_shard::ShardError as S;
    match s {
        S::Io { source, .. } => {
            by_io_kind(Some(source.kind()), &msg).unwrap_or_else(|| ShardError::new_err(msg))
        }
        S::MissingShard { .. } => PyFileNotFoundError::new_err(msg),
        // the reader words a missing manifest.json (or dataset folder) as an invalid
        // manifest; for Python it is a missing file
        S::Manifest { path, .. } if std::fs::symlink_metadata(path).is_err() => {
            PyFileNotFoundError::new_err(msg)
        }
        S::OutOfRange { .. } => PyIndexError::new_err(msg),
        S::Invalid(_) => PyValueError::new_err(msg),
        _ => ShardError::new_err(msg),
    }
}

/// A shard-crate error.
pub fn shard(e: &sv_shard::ShardError) -> PyErr {
    from_shard(e, message(e))
}

/// A pipeline error.
pub fn pipeline(e: &sv_pipeline::Error) -> PyErr {
    use sv_pipeline::Error as P;
    let msg = message(e);
    match e {
        P::Config(_) | P::Augment(_) => PyValueError::new_err(msg),
        P::Record { source, .. } | P::Shard(source) => from_shard(source, msg),
        P::AllBuffersHeld { held } => PyRuntimeError::new_err(format!(
            "all {held} batch buffers of the Loader are still in use: the arrays (or tensors \
             from torch.from_numpy) of {held} earlier batches are still referenced, so no \
             new batch can be made. Keep fewer batches alive, keep copies (images.copy()) of \
             those you store, or pass a larger hold= to the Loader"
        )),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// A statistics error.
pub fn stats(e: &sv_stats::StatsError) -> PyErr {
    use sv_stats::StatsError as St;
    let msg = message(e);
    if let Some(s) = shard_source(e) {
        return from_shard(s, msg);
    }
    if let Some(err) = by_io_kind(io_kind(e), &msg) {
        return err;
    }
    match e {
        St::Empty { .. } | St::InvalidInput(_) | St::ImageSize { .. } => PyValueError::new_err(msg),
        // a file given as statistics that is not one
        St::Json { .. } | St::Format { .. } => PyValueError::new_err(msg),
        St::Io { .. } | St::NotAFile { .. } => PyOSError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// A build error.
pub fn build(e: &sv_build::BuildError) -> PyErr {
    use sv_build::BuildError as B;
    let msg = message(e);
    if let B::Shard(s) = e {
        return from_shard(s, msg);
    }
    if let Some(err) = by_io_kind(io_kind(e), &msg) {
        return err;
    }
    match e {
        B::Input(_) | B::Setting { .. } => PyValueError::new_err(msg),
        B::Io { .. } | B::Rejected { .. } => PyOSError::new_err(msg),
        B::Occupied { .. } => pyo3::exceptions::PyFileExistsError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// A plain `ValueError`.
pub fn value(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}
