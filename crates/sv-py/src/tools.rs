//! `build_shards` and `compute_stats`: `supervision shard build` and `supervision pca
//! compute` as Python functions, with the CLI's meaning and defaults, a summary as
//! the result and an exception on failure. Both run with the GIL released.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use sv_build::{BuildConfig, InputSpec};

use crate::dataset::default_workers;
use crate::errors;

/// `devkit` as one path or several.
fn paths(value: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Vec<PathBuf>> {
    let Some(v) = value else {
        return Ok(Vec::new());
    };
    if v.is_none() {
        return Ok(Vec::new());
    }
    if let Ok(p) = v.extract::<PathBuf>() {
        return Ok(vec![p]);
    }
    v.extract::<Vec<PathBuf>>().map_err(|_| {
        errors::value(format!(
            "{name} must be a path or a list of paths, not {}",
            v.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })
}

/// Build a shard dataset from a folder of images, as `supervision shard build`:
/// every image decoded, its shorter side resized to `size`, the central square kept,
/// written as shards of at most `max_shard_mib` MiB in input order. Resumable,
/// byte-identical whatever the worker count; unusable files are skipped and reported
/// (or, with strict=True, raise).
///
/// Arguments (the CLI's flags and defaults):
///   input: a class-folder tree (one folder per wnid) or a flat folder with labels,
///     or a tar archive of either.
///   output: the dataset folder to write (created if missing).
///   split: "train" or "val".
///   labels: labels file for a flat folder (LOC_val_solution.csv or `filename wnid`
///     lines); looked for beside the folder when None.
///   devkit: the ILSVRC2012 devkit (archive or folder; or a list of its meta.mat
///     and validation ground-truth file).
///   part: "K/N": build only part K (from 0) of N contiguous slices.
///   classes_from: take the class list from this existing dataset.
///   codec: "raw" (the pixels, no decode cost) or "jpeg".
///   quality: JPEG quality 1-100 (codec="jpeg").
///   subsampling: "4:2:0" or "4:4:4" (codec="jpeg").
///   workers: decoding threads (default: all cores).
///   size: side of the stored square images (256).
///   max_shard_mib: largest shard file in MiB (1024).
///   strict: raise on the first file that cannot be used instead of skipping it.
///   max_reject_fraction: raise once more than this fraction (0 to 1) of the inputs
///     is rejected: a wrong folder or wrong labels, not a few bad files (default
///     0.05).
///   force: replace a dataset in `output` built from other inputs or settings.
///   hash_inputs: also record a CRC-32 of every input's content.
///
/// Returns a dict: output, records, shards, classes, codec, bytes, inputs, rejects
/// (list of (path, reason)), ignored (list of (path, reason)), resumed_shards,
/// resumed_inputs, rebuilt_because, up_to_date.
///
/// Raises FileNotFoundError for a missing input, ValueError for bad arguments or an
/// input with nothing to build, OSError (or supervision.ShardError) otherwise.
#[pyfunction]
#[pyo3(signature = (
    input, output, *, split="train", labels=None, devkit=None, part=None,
    classes_from=None, codec="raw", quality=90, subsampling="4:2:0", workers=None,
    size=256, max_shard_mib=1024, strict=false, max_reject_fraction=None, force=false,
    hash_inputs=false
))]
#[allow(clippy::too_many_arguments)]
pub fn build_shards<'py>(
    py: Python<'py>,
    input: PathBuf,
    output: PathBuf,
    split: &str,
    labels: Option<PathBuf>,
    devkit: Option<&Bound<'_, PyAny>>,
    part: Option<&str>,
    classes_from: Option<PathBuf>,
    codec: &str,
    quality: i64,
    subsampling: &str,
    workers: Option<i64>,
    size: i64,
    max_shard_mib: i64,
    strict: bool,
    max_reject_fraction: Option<f64>,
    force: bool,
    hash_inputs: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let split = one_of(
        "split",
        split,
        &[
            ("train", sv_core::Split::Train),
            ("val", sv_core::Split::Val),
        ],
    )?;
    let codec = one_of(
        "codec",
        codec,
        &[
            ("raw", sv_shard::Codec::Raw),
            ("jpeg", sv_shard::Codec::Jpeg),
        ],
    )?;
    let jpeg_subsampling = one_of(
        "subsampling",
        subsampling,
        &[
            ("4:2:0", sv_shard::Subsampling::S420),
            ("4:4:4", sv_shard::Subsampling::S444),
        ],
    )?;
    if !(1..=100).contains(&quality) {
        return Err(errors::value(format!(
            "quality must be 1 to 100, not {quality}"
        )));
    }
    let workers = match workers {
        None => default_workers(),
        Some(w) if w >= 1 => w as usize,
        Some(w) => {
            return Err(errors::value(format!(
                "workers must be at least 1, not {w}"
            )));
        }
    };
    let side = u32::try_from(size)
        .ok()
        .filter(|&s| s >= 1)
        .ok_or_else(|| {
            errors::value(format!(
                "size must be a positive side in pixels, not {size}"
            ))
        })?;
    if max_shard_mib < 1 {
        return Err(errors::value(format!(
            "max_shard_mib must be at least 1, not {max_shard_mib}"
        )));
    }
    let part = match part {
        None => None,
        Some(p) => Some(sv_build::Part::parse(p).map_err(|e| errors::value(format!("part: {e}")))?),
    };
    let devkit = paths(devkit, "devkit")?;
    // a path given that is not there is a FileNotFoundError, as for open()
    let given = [("input", Some(&input)), ("labels", labels.as_ref())]
        .into_iter()
        .chain(devkit.iter().map(|d| ("devkit", Some(d))))
        .chain([("classes_from", classes_from.as_ref())]);
    for (what, path) in given {
        if let Some(p) = path
            && let Err(e) = std::fs::symlink_metadata(p)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                "{what} {} does not exist",
                p.display()
            )));
        }
    }
    let classes = match &classes_from {
        None => None,
        Some(dir) => {
            let m = py.detach(|| sv_shard::Manifest::load(dir));
            Some(m.map_err(|e| errors::shard(&e))?.classes)
        }
    };
    let config = BuildConfig {
        input: InputSpec {
            input,
            labels,
            devkit,
            classes,
            // WebDataset/parquet inputs are found from the content; their extra
            // settings (several inputs, label key or column) are not offered here yet
            hub: Default::default(),
        },
        output: output.clone(),
        split,
        codec,
        jpeg_quality: quality as u8,
        jpeg_subsampling,
        side,
        workers,
        max_shard_bytes: (max_shard_mib as u64).saturating_mul(1 << 20),
        strict,
        max_reject_fraction: max_reject_fraction.unwrap_or(sv_build::DEFAULT_MAX_REJECT_FRACTION),
        force,
        hash_inputs,
        part,
    };
    let result = py.detach(|| sv_build::build(&config, &|_| {}));
    let s = result.map_err(|e| errors::build(&e))?;
    let m = &s.manifest;
    let d = PyDict::new(py);
    d.set_item("output", output)?;
    d.set_item("records", m.records)?;
    d.set_item("shards", m.shards.len())?;
    d.set_item("classes", m.classes.len())?;
    d.set_item("codec", m.codec.to_string())?;
    d.set_item("bytes", m.shards.iter().map(|e| e.bytes).sum::<u64>())?;
    d.set_item("inputs", s.inputs)?;
    let rejects: Vec<(String, String)> = s
        .rejects
        .iter()
        .map(|r| (r.path.clone(), r.reason.clone()))
        .collect();
    d.set_item("rejects", rejects)?;
    let ignored: Vec<(String, String)> = s
        .ignored
        .iter()
        .map(|r| (r.path.clone(), r.reason.clone()))
        .collect();
    d.set_item("ignored", ignored)?;
    d.set_item("resumed_shards", s.resumed_shards)?;
    d.set_item("resumed_inputs", s.resumed_inputs)?;
    d.set_item("rebuilt_because", s.rebuilt_because.clone())?;
    d.set_item("up_to_date", s.up_to_date)?;
    Ok(d)
}

/// Refuse an output path that cannot be written before the pass, as the CLI does.
fn check_output(path: &Path, what: &str) -> PyResult<()> {
    sv_core::fs::check_write_target(path).map_err(|e| {
        errors::value(format!(
            "{what} {} cannot be written: {}",
            path.display(),
            errors::message(&e)
        ))
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!(
                "creating directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(())
}

/// The training set's statistics in one pass, as `supervision pca compute`:
/// per-pixel mean image, per-channel mean and standard deviation, the RGB
/// covariance and its eigen-decomposition (for mean subtraction and PCA lighting),
/// written to `output` as JSON. Identical for any worker count.
///
/// Arguments (the CLI's flags and defaults):
///   shards: the shard dataset (normally the training split).
///   output: where to write the statistics JSON.
///   mean_image: also write the per-pixel mean image here (.npy, float32,
///     (3, side, side), 0-255); Loader(mean="image") reads it through the JSON.
///   sample: use a seeded subset of this many records (a quick estimate).
///   workers: threads (default: all cores).
///   seed: seed of the `sample` draw.
///   verify: check every record's CRC-32 (default True).
///
/// Returns the statistics as a dict (the JSON's content). Raises FileNotFoundError
/// for a missing dataset, supervision.ShardError for a damaged one, ValueError for
/// bad arguments or statistics that cannot be used (a channel without variance).
#[pyfunction]
#[pyo3(signature = (shards, output, *, mean_image=None, sample=None, workers=None, seed=0, verify=true))]
#[allow(clippy::too_many_arguments)]
pub fn compute_stats<'py>(
    py: Python<'py>,
    shards: PathBuf,
    output: PathBuf,
    mean_image: Option<PathBuf>,
    sample: Option<i64>,
    workers: Option<i64>,
    seed: u64,
    verify: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let sample = match sample {
        None => None,
        Some(n) if n >= 1 => Some(n as u64),
        Some(n) => return Err(errors::value(format!("sample must be at least 1, not {n}"))),
    };
    let workers = match workers {
        None => default_workers(),
        Some(w) if w >= 1 => w as usize,
        Some(w) => {
            return Err(errors::value(format!(
                "workers must be at least 1, not {w}"
            )));
        }
    };
    if mean_image.as_ref() == Some(&output) {
        return Err(errors::value(format!(
            "output and mean_image both name {}: give two files",
            output.display()
        )));
    }
    check_output(&output, "output")?;
    if let Some(p) = &mean_image {
        check_output(p, "mean_image")?;
    }
    let config = sv_stats::ComputeConfig {
        workers,
        sample,
        seed,
        verify,
    };
    let done = py.detach(|| -> Result<sv_stats::PcaStats, PyErrLater> {
        let dataset = sv_shard::Dataset::open(&shards).map_err(PyErrLater::Shard)?;
        let computed = sv_stats::compute(&dataset, &config, &|_| {}).map_err(PyErrLater::Stats)?;
        let mut stats = computed.stats;
        stats.validate(&output).map_err(PyErrLater::Stats)?;
        if let Some(path) = &mean_image {
            computed
                .mean_image
                .save_npy(path)
                .map_err(PyErrLater::Stats)?;
            stats.mean_image = Some(sv_stats::MeanImageInfo::new(
                path.display().to_string(),
                computed.mean_image.side,
            ));
        }
        stats.save(&output).map_err(PyErrLater::Stats)?;
        Ok(stats)
    });
    let stats = done.map_err(|e| match e {
        PyErrLater::Shard(e) => errors::shard(&e),
        PyErrLater::Stats(e) => errors::stats(&e),
    })?;
    let text = serde_json::to_string(&stats)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// An error made without the GIL, turned into an exception once it is back.
enum PyErrLater {
    Shard(sv_shard::ShardError),
    Stats(sv_stats::StatsError),
}

/// The value named `given` among `choices`, or a ValueError naming the argument and
/// the accepted names (`codec="png" is not "raw" or "jpeg"`).
fn one_of<T: Copy>(arg: &str, given: &str, choices: &[(&str, T)]) -> PyResult<T> {
    choices
        .iter()
        .find(|(name, _)| *name == given)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            errors::value(format!("{arg}={given:?} is not {}", names.join(" or ")))
        })
}
