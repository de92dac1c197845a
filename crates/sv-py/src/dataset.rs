//! `supervision.Dataset`: a shard dataset as a Python sequence of `(image, label)`.
//!
//! The dataset is memory-mapped once (`sv_shard::Dataset::open` checks the manifest,
//! every shard's header, index and length first); `ds[i]` checks the record's CRC-32
//! and decodes it (JPEG) with the GIL released, into a fresh array the caller owns.
//! It holds no threads, so it works unchanged in a forked child (a `DataLoader`
//! worker), where the inherited maps stay valid.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::Array3;
use numpy::{PyArray1, PyArray3};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors;

/// A shard dataset (the folder `supervision shard build` or `build_shards` wrote).
///
/// Dataset(path)
///
/// Opening reads the manifest (its checksum must hold) and checks every shard's
/// header, index and length against it; a missing path raises FileNotFoundError, a
/// damaged manifest or shard raises supervision.ShardError naming the file.
///
/// len(ds) is the number of records; ds[i] (negative i counts from the end) is
/// (image, label): image an (side, side, 3) uint8 RGB array of its own (raw records
/// are copied out of the map, JPEG records decoded), label an int. The record's CRC-32
/// is checked first: a damaged record raises supervision.ShardError naming the shard
/// file and the record.
///
/// Attributes: path, side, codec ("raw" or "jpeg"), split ("train" or "val"),
/// classes (list of (wnid, name)), wnids, names, labels (int64 array, one per
/// record), shards (number of shard files).
#[pyclass(module = "supervision", name = "Dataset", frozen)]
pub struct Dataset {
    pub(crate) inner: Arc<sv_shard::Dataset>,
    pub(crate) path: PathBuf,
}

impl Dataset {
    /// Open `path`, with the GIL released.
    pub(crate) fn open(py: Python<'_>, path: PathBuf) -> PyResult<Dataset> {
        let opened = py.detach(|| sv_shard::Dataset::open(&path));
        let inner = opened.map_err(|e| errors::shard(&e))?;
        Ok(Dataset {
            inner: Arc::new(inner),
            path,
        })
    }
}

#[pymethods]
impl Dataset {
    #[new]
    #[pyo3(signature = (path))]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Dataset> {
        Dataset::open(py, path)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "supervision.Dataset({:?}: {} {} records of {side}x{side}, {} classes)",
            self.path.display().to_string(),
            self.inner.len(),
            self.inner.codec(),
            self.inner.classes().len(),
            side = self.inner.geometry().side,
        )
    }

    /// (image, label) of record `index`, CRC-checked.
    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        index: isize,
    ) -> PyResult<(Bound<'py, PyArray3<u8>>, u32)> {
        let len = self.inner.len();
        let i = if index < 0 {
            index + len as isize
        } else {
            index
        };
        if i < 0 || i as usize >= len {
            return Err(pyo3::exceptions::PyIndexError::new_err(format!(
                "record index {index} is out of range: the dataset has {len} records"
            )));
        }
        let ds = &self.inner;
        let side = ds.geometry().side as usize;
        let got = py.detach(|| -> Result<(Vec<u8>, u32), sv_shard::ShardError> {
            let record = ds.record(i as usize)?;
            record.verify()?;
            let mut pixels = vec![0u8; side * side * 3];
            record.decode_into(&mut pixels)?;
            Ok((pixels, record.label))
        });
        let (pixels, label) = got.map_err(|e| errors::shard(&e))?;
        let array = Array3::from_shape_vec((side, side, 3), pixels)
            .map_err(|e| errors::value(e.to_string()))?;
        Ok((PyArray3::from_owned_array(py, array), label))
    }

    /// The dataset folder.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Stored image side in pixels.
    #[getter]
    fn side(&self) -> u32 {
        self.inner.geometry().side
    }

    /// Record codec: "raw" or "jpeg".
    #[getter]
    fn codec(&self) -> String {
        self.inner.codec().to_string()
    }

    /// "train" or "val".
    #[getter]
    fn split(&self) -> String {
        self.inner.manifest().split.to_string()
    }

    /// Number of shard files.
    #[getter]
    fn shards(&self) -> usize {
        self.inner.shard_count()
    }

    /// The classes in label order, as (wnid, name) pairs.
    #[getter]
    fn classes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let pairs: Vec<(String, String)> = self
            .inner
            .classes()
            .iter()
            .map(|c| (c.wnid.clone(), c.name.clone()))
            .collect();
        PyList::new(py, pairs)
    }

    /// WordNet ids in label order.
    #[getter]
    fn wnids(&self) -> Vec<String> {
        self.inner
            .classes()
            .iter()
            .map(|c| c.wnid.clone())
            .collect()
    }

    /// Class names in label order.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.inner
            .classes()
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// Every record's label, as an int64 array (read from the shard indexes, no
    /// payload touched).
    #[getter]
    fn labels<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let ds = &self.inner;
        let labels = py.detach(|| {
            (0..ds.len())
                .map(|i| ds.label(i).map(i64::from))
                .collect::<Result<Vec<i64>, _>>()
        });
        let labels = labels.map_err(|e| errors::shard(&e))?;
        Ok(PyArray1::from_vec(py, labels))
    }

    /// Check the whole dataset as `supervision shard verify` does: the manifest,
    /// every shard's file checksum and every record's checksum (JPEG records are
    /// also decoded), with plain reads, on `workers` threads (default: all cores).
    ///
    /// Returns {"shards", "records", "bytes", "leftovers"} when everything holds;
    /// raises supervision.ShardError listing every problem (file and record)
    /// otherwise.
    #[pyo3(signature = (workers=None))]
    fn verify<'py>(&self, py: Python<'py>, workers: Option<usize>) -> PyResult<Bound<'py, PyDict>> {
        if workers == Some(0) {
            return Err(errors::value("workers must be at least 1"));
        }
        let workers = workers.unwrap_or_else(default_workers);
        let dir = self.inner.dir().to_path_buf();
        let report = py.detach(|| sv_shard::verify::verify_dataset(&dir, workers, &|_| {}));
        let report = report.map_err(|e| errors::shard(&e))?;
        if !report.ok() {
            let mut msg = format!(
                "{}: {} problem(s) found:",
                dir.display(),
                report.problems.len()
            );
            for p in report.problems.iter().take(20) {
                msg.push_str(&format!("\n  {p}"));
            }
            if report.problems.len() > 20 {
                msg.push_str(&format!("\n  ... and {} more", report.problems.len() - 20));
            }
            return Err(errors::ShardError::new_err(msg));
        }
        let d = PyDict::new(py);
        d.set_item("shards", report.shards)?;
        d.set_item("records", report.records)?;
        d.set_item("bytes", report.bytes)?;
        let leftovers: Vec<String> = report
            .leftovers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        d.set_item("leftovers", leftovers)?;
        Ok(d)
    }
}

/// All cores, as the CLI's default.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(sv_pipeline::MAX_WORKERS)
}
