//! The Python module `supervision` (imported by the package as
//! `supervision._supervision`): SuperVision's shard datasets, statistics and loader
//! for a PyTorch script.
//!
//! - [`dataset::Dataset`]: a shard dataset as a sequence of `(HxWx3 uint8 ndarray,
//!   label)`, its classes and labels, and `verify()`.
//! - [`loader::Loader`]: the Rust pipeline (`sv_pipeline::Loader`) as an iterable of
//!   `(images, labels)` numpy arrays; the images array *is* the pipeline's batch
//!   buffer (no copy), handed back to the pipeline's pool when Python drops it.
//! - [`tools::build_shards`] and [`tools::compute_stats`]: `supervision shard build`
//!   and `supervision pca compute` as functions.
//!
//! Errors become Python exceptions carrying the Rust message with its causes
//! ([`errors`]). The GIL is released while Rust works or waits. Threads never outlive
//! the objects that own them, and an object used in a process forked from the one
//! that made it refuses (or, for its threads, is abandoned) instead of deadlocking.

mod dataset;
mod errors;
mod loader;
mod tools;

use pyo3::prelude::*;

/// The native part of the `supervision` package; import `supervision` instead.
#[pymodule]
fn _supervision(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ShardError", py.get_type::<errors::ShardError>())?;
    m.add_class::<dataset::Dataset>()?;
    m.add_class::<loader::Loader>()?;
    m.add_class::<loader::LoaderIter>()?;
    m.add_class::<loader::BatchMemory>()?;
    m.add_function(wrap_pyfunction!(tools::build_shards, m)?)?;
    m.add_function(wrap_pyfunction!(tools::compute_stats, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
