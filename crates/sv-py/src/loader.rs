//! `supervision.Loader`: the Rust pipeline as a Python iterable of numpy batches.
//!
//! # Memory: no copy
//!
//! Each batch's pixels are an `sv_pipeline::Batch`'s own buffer. The batch is moved
//! into a small Python object ([`BatchMemory`]) that becomes the numpy array's
//! `base`; the array points at the buffer. When Python drops the last array (or
//! tensor from `torch.from_numpy`) viewing it, the `Batch` is dropped and its
//! buffers go back to the pipeline's pool for a later batch. The buffer never moves
//! while the batch is alive (it is a heap allocation owned through a `Box`).
//!
//! # Iteration, epochs and resume
//!
//! `iter(loader)` starts one epoch: a fresh `sv_pipeline::Loader` (its threads)
//! owned by the returned [`LoaderIter`], so breaking out of a `for` loop drops the
//! iterator and with it the threads (joined, with the GIL released). The epoch is
//! the loader's `epoch`: 0 at first, `set_epoch(e)`, and one more after each epoch
//! run to its end (an abandoned epoch is run again from its start, as a
//! `DataLoader` without `set_epoch` would). `state_dict()` is the position after the
//! last batch handed out; `load_state_dict()` makes the next iteration start there,
//! so the batches are exactly those an uninterrupted epoch would have given.
//!
//! # Waiting
//!
//! The consumer polls the pipeline's async stream with a waker that unparks this
//! thread, the GIL released, in slices of [`WAIT_SLICE`]; between slices it lets
//! Python run its signal handlers, so Ctrl-C raises `KeyboardInterrupt` promptly.
//!
//! # fork
//!
//! The loader records the process that made it. Threads do not survive `fork`: an
//! iterator (and its pipeline) used in a child raises `RuntimeError`, and the
//! child's copies are never shut down (that would wait for threads that do not
//! exist there); they are leaked instead. A `Loader` that is not being iterated may
//! be iterated in a child: the child starts its own pipeline.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use numpy::ndarray::{ArrayViewMut, IxDyn};
use numpy::{Element, PyArray, PyArray1, PyArray2};
use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString};
use sv_pipeline::{
    Augment, Layout, Lighting, LightingConvention, LoaderConfig, Mean, Normalize, OnError, Output,
    Position,
};

use crate::dataset::{Dataset, default_workers};
use crate::errors;

/// How long the consumer waits with the GIL released before checking for signals.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Version of the `state_dict()` layout.
const STATE_VERSION: u64 = 1;

/// The current process id.
fn pid() -> u32 {
    std::process::id()
}

/// The RuntimeError for an object used after `fork`.
fn forked(what: &str, made: u32) -> PyErr {
    PyRuntimeError::new_err(format!(
        "this {what} was started in process {made} and cannot be used in process {} \
         (a fork of it): its threads do not exist here. Start iterating in the child \
         (iterate the Loader there, e.g. in a DataLoader worker), or use the Loader with \
         DataLoader(num_workers=0): it has its own worker threads",
        pid()
    ))
}

/// What the next iteration does and where the current one is.
#[derive(Debug, Default)]
struct Progress {
    /// The epoch a fresh iteration runs.
    epoch: u64,
    /// Set by `load_state_dict`: where the next iteration starts.
    resume: Option<Position>,
    /// In the current iteration: the position after the last batch handed out.
    current: Option<Position>,
    /// Counts iterations started; an iterator whose number is not the last is stale.
    generation: u64,
}

/// The settings that must match for a saved state to apply.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fingerprint {
    records: usize,
    batch_size: usize,
    world_size: usize,
    seed: u64,
    shuffle: bool,
    drop_last: bool,
}

/// Batches of images and labels from a shard dataset, made by SuperVision's Rust
/// pipeline (its own worker threads; the GIL is released while they work and while
/// the loop waits).
///
/// Loader(path, batch_size, *, train=True, crop=227, flip=True, ten_crop=False,
///        lighting=None, alpha=None, lighting_convention="paper", stats=None,
///        mean=None, std=True, output="uint8", layout=None, seed=0, shuffle=None,
///        drop_last=None, workers=None, prefetch=2, hold=2, rank=None,
///        world_size=None, verify=False, skip_damaged=False, release_pages=False,
///        with_info=False)
///
/// Iterating gives one epoch of (images, labels): images a numpy array that *is*
/// the pipeline's batch buffer (torch.from_numpy wraps it without a copy; the
/// buffer is reused once every array and tensor viewing it is gone), labels an
/// int64 array of len(labels) samples. Breaking out of the loop, or dropping the
/// iterator, stops the pipeline's threads. Each iteration is one epoch: epoch 0
/// first, then the next after each complete epoch; set_epoch(e) chooses it.
/// state_dict() / load_state_dict() resume exactly mid-epoch (the protocol of
/// torchdata's StatefulDataLoader and Lightning). The same settings give the same
/// batches as the Rust pipeline (`supervision bench pipeline`, `supervision
/// train`), whatever the worker count.
///
/// Arguments:
///   path: the shard dataset folder.
///   batch_size: samples per batch.
///   train: True: random crop of `crop` (with `flip` and `lighting`), shuffled each
///     epoch. False (evaluation): the centre crop (or the ten crops), dataset order,
///     and with drop_last=False the last batch is cut to the records left (no
///     repeats), so every record is seen exactly once over all ranks.
///   crop: side of the square crop (227 in the paper; at most the stored side).
///   flip: train only: mirror each crop left-right with probability 0.5.
///   ten_crop: evaluation only: the paper's ten views per sample (four corners and
///     centre, and their mirrors); images then have shape (n, 10, ...).
///   lighting: PCA lighting noise (train only): None or False for none; a
///     statistics file from compute_stats (its eigenvectors and eigenvalues);
///     "imagenet" for fb.resnet.torch's ImageNet constants (what `supervision bench
///     pipeline` uses without --stats); True for the `stats` file's.
///   alpha: standard deviation of the lighting draws (default: the statistics
///     file's, 0.1 as in the paper).
///   lighting_convention: "paper" (eigenvalues of [0,1] pixels, as fb.resnet.torch)
///     or "cuda-convnet2" (square roots of the 0-255 eigenvalues).
///   stats: statistics file from compute_stats for `mean` and `std` (default: the
///     `lighting` file when that is a path).
///   mean: float32 output only, what is subtracted (0-255 scale): None (nothing),
///     "channel" (the statistics' per-channel mean), "image" (the statistics'
///     per-pixel mean image, the .npy compute_stats wrote with mean_image=, at each
///     crop pixel's source position, as the paper), "imagenet" (torchvision's
///     ImageNet mean).
///   std: float32 output only: also divide by the per-channel standard deviation
///     (the statistics' for "channel"/"image", torchvision's for "imagenet"; 1 for
///     mean=None).
///   output: "uint8" (crops as stored; the lighting offset per image is in the
///     info's "lighting", to add on the device) or "float32" ((pixel + lighting -
///     mean) / std computed on the CPU, always NCHW).
///   layout: "NHWC" (default for uint8) or "NCHW" (float32 is always NCHW).
///   seed: seed of the epoch order and of every sample's random choices.
///   shuffle: shuffle each epoch (default: `train`).
///   drop_last: leave out the last partial batch (default: `train`); False pads it
///     by wrapping around to the epoch's start (cut off again in evaluation mode).
///   workers: pipeline threads (default: all cores).
///   prefetch: finished batches that may wait beyond one per worker.
///   hold: batches the loop may keep alive (arrays still referenced) while asking
///     for the next one; holding every buffer raises RuntimeError.
///   rank, world_size: this process's share of each epoch, split as `supervision
///     train` splits it (sample j of the epoch's order goes to rank j mod
///     world_size; every rank gets the same number of batches). Default: torchrun's
///     RANK / WORLD_SIZE, else Slurm's SLURM_PROCID / SLURM_STEP_NUM_TASKS (or
///     SLURM_NTASKS), else 0 and 1.
///   verify: check every record's CRC-32 before using it.
///   skip_damaged: leave a damaged record out of its batch (which is then shorter)
///     instead of raising supervision.ShardError.
///   release_pages: unmap each record's pages after use, so resident memory stays
///     independent of the dataset size.
///   with_info: yield (images, labels, info) with info a dict: "indices" (dataset
///     record per sample, int64), "lighting" (float32 (images, 3), the offset in
///     0-255 grey levels; zero without lighting), "flip" (bool per image),
///     "position" ((epoch, batch)).
///
/// Errors: a missing path raises FileNotFoundError; a damaged shard or record
/// supervision.ShardError (an OSError) naming the file and record; a bad argument
/// ValueError.
#[pyclass(module = "supervision", name = "Loader", frozen)]
pub struct Loader {
    dataset: Arc<sv_shard::Dataset>,
    path: PathBuf,
    config: LoaderConfig,
    batches_per_epoch: u64,
    /// Evaluation: cut the wrapped-around padding off the last batch.
    trim: bool,
    with_info: bool,
    fingerprint: Fingerprint,
    progress: Arc<Mutex<Progress>>,
}

fn lock(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// A launcher variable parsed as a whole number, or a ValueError naming it.
fn env_number(name: &str) -> PyResult<Option<usize>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse::<usize>().map(Some).map_err(|_| {
            errors::value(format!(
                "the environment variable {name}={v:?} is not a whole number"
            ))
        }),
        _ => Ok(None),
    }
}

/// rank and world size from the launcher's environment, as `supervision train`
/// reads them: torchrun's RANK / WORLD_SIZE, else Slurm's SLURM_PROCID and
/// SLURM_STEP_NUM_TASKS (else SLURM_NTASKS).
fn launcher_rank() -> PyResult<Option<(usize, usize)>> {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    if set("RANK") || set("WORLD_SIZE") {
        let rank = env_number("RANK")?
            .ok_or_else(|| errors::value("WORLD_SIZE is set but RANK is not"))?;
        let world = env_number("WORLD_SIZE")?
            .ok_or_else(|| errors::value("RANK is set but WORLD_SIZE is not"))?;
        return Ok(Some((rank, world)));
    }
    if set("SLURM_PROCID") {
        let rank = env_number("SLURM_PROCID")?.unwrap_or(0);
        let world = match env_number("SLURM_STEP_NUM_TASKS")? {
            Some(n) => n,
            None => env_number("SLURM_NTASKS")?.ok_or_else(|| {
                errors::value(
                    "SLURM_PROCID is set but neither SLURM_STEP_NUM_TASKS nor SLURM_NTASKS",
                )
            })?,
        };
        return Ok(Some((rank, world)));
    }
    Ok(None)
}

/// The `lighting` argument.
enum LightingArg {
    Off,
    FromStats,
    File(PathBuf),
    Imagenet,
}

fn lighting_arg(value: Option<&Bound<'_, PyAny>>) -> PyResult<LightingArg> {
    let Some(v) = value else {
        return Ok(LightingArg::Off);
    };
    if v.is_none() {
        return Ok(LightingArg::Off);
    }
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(if b.is_true() {
            LightingArg::FromStats
        } else {
            LightingArg::Off
        });
    }
    if let Ok(s) = v.cast::<PyString>()
        && s.to_cow()? == "imagenet"
    {
        return Ok(LightingArg::Imagenet);
    }
    match v.extract::<PathBuf>() {
        Ok(p) => Ok(LightingArg::File(p)),
        Err(_) => Err(errors::value(format!(
            "lighting must be None, a statistics file path, \"imagenet\" or a bool, not {}",
            v.repr()?
        ))),
    }
}

fn load_stats(py: Python<'_>, path: &Path, what: &str) -> PyResult<sv_stats::PcaStats> {
    let loaded = py.detach(|| sv_stats::PcaStats::load(path));
    loaded.map_err(|e| {
        let err = errors::stats(&e);
        // name the argument too
        let msg = format!("{what}: {}", errors::message(&e));
        if err.is_instance_of::<pyo3::exceptions::PyFileNotFoundError>(py) {
            pyo3::exceptions::PyFileNotFoundError::new_err(msg)
        } else {
            errors::value(msg)
        }
    })
}

/// The mean image named in a statistics file, relative to that file's folder when
/// the recorded path does not exist as written.
fn mean_image(py: Python<'_>, stats: &sv_stats::PcaStats, stats_path: &Path) -> PyResult<Vec<f32>> {
    let info = stats.mean_image.as_ref().ok_or_else(|| {
        errors::value(format!(
            "mean=\"image\": {} names no mean image (compute_stats(..., mean_image=...) writes one)",
            stats_path.display()
        ))
    })?;
    let mut file = PathBuf::from(&info.file);
    if !file.exists()
        && file.is_relative()
        && let Some(dir) = stats_path.parent()
    {
        file = dir.join(&file);
    }
    let loaded = py.detach(|| sv_stats::MeanImage::load_npy(&file));
    let m = loaded.map_err(|e| {
        let err = errors::stats(&e);
        let msg = format!(
            "mean image {} (from {}): {}",
            file.display(),
            stats_path.display(),
            errors::message(&e)
        );
        if err.is_instance_of::<pyo3::exceptions::PyFileNotFoundError>(py) {
            pyo3::exceptions::PyFileNotFoundError::new_err(msg)
        } else {
            errors::value(msg)
        }
    })?;
    Ok(m.to_hwc())
}

fn choice<'a>(name: &str, value: &str, allowed: &[&'a str]) -> PyResult<&'a str> {
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(value))
        .copied()
        .ok_or_else(|| {
            errors::value(format!(
                "{name}={value:?} is not one of {}",
                allowed
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

#[pymethods]
impl Loader {
    #[new]
    #[pyo3(signature = (
        path, batch_size, *, train=true, crop=227, flip=true, ten_crop=false,
        lighting=None, alpha=None, lighting_convention="paper", stats=None, mean=None,
        std=true, output="uint8", layout=None, seed=0, shuffle=None, drop_last=None,
        workers=None, prefetch=2, hold=2, rank=None, world_size=None, verify=false,
        skip_damaged=false, release_pages=false, with_info=false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        batch_size: i64,
        train: bool,
        crop: i64,
        flip: bool,
        ten_crop: bool,
        lighting: Option<&Bound<'_, PyAny>>,
        alpha: Option<f64>,
        lighting_convention: &str,
        stats: Option<PathBuf>,
        mean: Option<&str>,
        std: bool,
        output: &str,
        layout: Option<&str>,
        seed: u64,
        shuffle: Option<bool>,
        drop_last: Option<bool>,
        workers: Option<i64>,
        prefetch: i64,
        hold: i64,
        rank: Option<i64>,
        world_size: Option<i64>,
        verify: bool,
        skip_damaged: bool,
        release_pages: bool,
        with_info: bool,
    ) -> PyResult<Loader> {
        let positive = |name: &str, v: i64| -> PyResult<usize> {
            if v < 1 {
                Err(errors::value(format!("{name} must be at least 1, not {v}")))
            } else {
                Ok(v as usize)
            }
        };
        let non_negative = |name: &str, v: i64| -> PyResult<usize> {
            if v < 0 {
                Err(errors::value(format!(
                    "{name} must not be negative, not {v}"
                )))
            } else {
                Ok(v as usize)
            }
        };
        let batch_size = positive("batch_size", batch_size)?;
        let crop = u32::try_from(positive("crop", crop)?)
            .map_err(|_| errors::value(format!("crop={crop} is too large")))?;
        let workers = match workers {
            Some(w) => positive("workers", w)?,
            None => default_workers(),
        };
        let prefetch = non_negative("prefetch", prefetch)?;
        let hold = positive("hold", hold)?;
        if ten_crop && train {
            return Err(errors::value(
                "ten_crop=True is an evaluation mode: pass train=False with it",
            ));
        }
        let (env_rank, env_world) = match (rank, world_size) {
            (Some(_), Some(_)) => (None, None),
            _ => launcher_rank()?.map_or((None, None), |(r, w)| (Some(r), Some(w))),
        };
        let rank = match rank {
            Some(r) => non_negative("rank", r)?,
            None => env_rank.unwrap_or(0),
        };
        let world_size = match world_size {
            Some(w) => positive("world_size", w)?,
            None => env_world.unwrap_or(1),
        };
        if rank >= world_size {
            return Err(errors::value(format!(
                "rank {rank} is not below world_size {world_size}"
            )));
        }
        let convention = match choice(
            "lighting_convention",
            lighting_convention,
            &["paper", "cuda-convnet2"],
        )? {
            "paper" => LightingConvention::Paper,
            _ => LightingConvention::CudaConvnet2,
        };
        if let Some(a) = alpha
            && !(a.is_finite() && a >= 0.0)
        {
            return Err(errors::value(format!(
                "alpha must be a finite number >= 0, not {a}"
            )));
        }
        let lighting = lighting_arg(lighting)?;
        // The statistics file for mean/std: `stats`, else the lighting file.
        let stats_path = stats.clone().or_else(|| match &lighting {
            LightingArg::File(p) => Some(p.clone()),
            _ => None,
        });
        let mut loaded: Option<sv_stats::PcaStats> = None;
        let mut stats_file = |py: Python<'_>, why: &str| -> PyResult<sv_stats::PcaStats> {
            if let Some(s) = &loaded {
                return Ok(s.clone());
            }
            let p = stats_path.as_ref().ok_or_else(|| {
                errors::value(format!("{why} needs a statistics file: pass stats=<file>"))
            })?;
            let s = load_stats(py, p, &format!("statistics file {}", p.display()))?;
            loaded = Some(s.clone());
            Ok(s)
        };
        let lighting: Option<Lighting> = match lighting {
            LightingArg::Off => None,
            LightingArg::Imagenet => Some(Lighting {
                convention,
                std: alpha.map_or(0.1, |a| a as f32),
                ..Lighting::fb_resnet()
            }),
            LightingArg::FromStats | LightingArg::File(_) => {
                let s = match &lighting {
                    LightingArg::File(p) => {
                        load_stats(py, p, &format!("lighting statistics file {}", p.display()))?
                    }
                    _ => stats_file(py, "lighting=True")?,
                };
                let mut l = s.lighting(convention);
                l.std = alpha.map_or(s.lighting.alpha_std as f32, |a| a as f32);
                Some(l)
            }
        };
        if lighting.is_some() && !train {
            return Err(errors::value(
                "lighting is training augmentation: pass lighting=None with train=False",
            ));
        }
        let float = choice("output", output, &["uint8", "float32"])? == "float32";
        let layout = match layout {
            None => None,
            Some(l) => Some(choice("layout", l, &["NHWC", "NCHW"])?),
        };
        let output = if float {
            if layout == Some("NHWC") {
                return Err(errors::value(
                    "float32 batches are NCHW: leave layout unset or pass layout=\"NCHW\"",
                ));
            }
            let norm = match mean {
                None => Normalize {
                    mean: Mean::Channel([0.0; 3]),
                    std: [1.0; 3],
                },
                Some(m) => match choice("mean", m, &["channel", "image", "imagenet"])? {
                    "imagenet" => {
                        let n = Normalize::imagenet();
                        Normalize {
                            mean: n.mean,
                            std: if std { n.std } else { [1.0; 3] },
                        }
                    }
                    which => {
                        let s = stats_file(py, &format!("mean={which:?}"))?;
                        let sd = if std {
                            s.scale_255.std.map(|v| v as f32)
                        } else {
                            [1.0; 3]
                        };
                        let mean = if which == "channel" {
                            Mean::Channel(s.scale_255.mean.map(|v| v as f32))
                        } else {
                            let p = stats_path.clone().unwrap_or_default();
                            Mean::Image(mean_image(py, &s, &p)?)
                        };
                        Normalize { mean, std: sd }
                    }
                },
            };
            Output::F32(norm)
        } else {
            if mean.is_some() {
                return Err(errors::value(
                    "mean applies to output=\"float32\"; uint8 batches are as stored (subtract \
                     the mean on the device)",
                ));
            }
            Output::U8(if layout == Some("NCHW") {
                Layout::Nchw
            } else {
                Layout::Nhwc
            })
        };
        let augment = if train {
            Augment::Train {
                crop,
                flip,
                lighting,
            }
        } else if ten_crop {
            Augment::TenCrop { crop }
        } else {
            Augment::Center { crop }
        };
        let shuffle = shuffle.unwrap_or(train);
        let drop_last = drop_last.unwrap_or(train);
        let config = LoaderConfig {
            batch_size,
            workers,
            prefetch,
            hold,
            seed,
            shuffle,
            rank,
            world_size,
            drop_last,
            start: Position::default(),
            epochs: Some(1),
            augment,
            output,
            verify,
            on_error: if skip_damaged {
                OnError::Skip
            } else {
                OnError::Fail
            },
            release_pages,
        };
        let ds = Dataset::open(py, path.clone())?;
        let dataset = ds.inner;
        // Every setting is checked against the dataset now, not at the first batch:
        // a pipeline of zero epochs checks them all and starts no work.
        let check = LoaderConfig {
            epochs: Some(0),
            workers: 1,
            ..config.clone()
        };
        let probe = {
            let dataset = dataset.clone();
            py.detach(move || {
                sv_pipeline::Loader::new(dataset, check).map(|l| l.batches_per_epoch())
            })
        };
        let batches_per_epoch = probe.map_err(|e| errors::pipeline(&e))?;
        let fingerprint = Fingerprint {
            records: dataset.len(),
            batch_size,
            world_size,
            seed,
            shuffle,
            drop_last,
        };
        register_with_torch(py);
        Ok(Loader {
            dataset,
            path,
            trim: !train && !drop_last && !shuffle,
            config,
            batches_per_epoch,
            with_info,
            fingerprint,
            progress: Arc::new(Mutex::new(Progress::default())),
        })
    }

    /// Batches per epoch on this rank.
    fn __len__(&self) -> usize {
        self.batches_per_epoch as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "supervision.Loader({:?}, batch_size={}, rank {} of {}, {} batches per epoch)",
            self.path.display().to_string(),
            self.config.batch_size,
            self.config.rank,
            self.config.world_size,
            self.batches_per_epoch
        )
    }

    /// Start an epoch: the epoch set (or reached), or the position a
    /// load_state_dict() gave. Only the newest iterator of a loader is live.
    fn __iter__(&self, py: Python<'_>) -> PyResult<LoaderIter> {
        let (start, generation) = {
            let mut p = lock(&self.progress);
            let start = p.resume.take().unwrap_or(Position {
                epoch: p.epoch,
                batch: 0,
            });
            p.generation += 1;
            p.current = Some(start);
            (start, p.generation)
        };
        let config = LoaderConfig {
            start,
            ..self.config.clone()
        };
        let dataset = self.dataset.clone();
        let started = py.detach(move || sv_pipeline::Loader::new(dataset, config));
        let loader = started.map_err(|e| errors::pipeline(&e))?;
        Ok(LoaderIter {
            inner: Mutex::new(IterState {
                loader: Some(loader),
                done: false,
            }),
            pid: pid(),
            start,
            generation,
            progress: self.progress.clone(),
            trim: self.trim.then(|| Trim {
                records: self.dataset.len() as u64,
                batch_size: self.config.batch_size as u64,
                rank: self.config.rank as u64,
                world_size: self.config.world_size as u64,
            }),
            with_info: self.with_info,
            views: self.config.augment.views(),
        })
    }

    /// The epoch the next iteration runs (unless a loaded state says otherwise).
    #[getter]
    fn epoch(&self) -> u64 {
        lock(&self.progress).epoch
    }

    /// Samples per batch.
    #[getter]
    fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    /// This process's rank.
    #[getter]
    fn rank(&self) -> usize {
        self.config.rank
    }

    /// Number of ranks sharing each epoch.
    #[getter]
    fn world_size(&self) -> usize {
        self.config.world_size
    }

    /// Records in the dataset.
    #[getter]
    fn records(&self) -> usize {
        self.dataset.len()
    }

    /// Choose the epoch the next iteration runs (its order and random choices
    /// depend on it). A state loaded for this same epoch is kept; one for another
    /// epoch is dropped.
    fn set_epoch(&self, epoch: i64) -> PyResult<()> {
        if epoch < 0 {
            return Err(errors::value(format!(
                "epoch must not be negative, not {epoch}"
            )));
        }
        let mut p = lock(&self.progress);
        p.epoch = epoch as u64;
        if p.resume.is_some_and(|r| r.epoch != epoch as u64) {
            p.resume = None;
        }
        Ok(())
    }

    /// Where the loader stands: {"epoch", "batch"} is the next batch to hand out
    /// (after the last one handed out by the current iteration), with the settings
    /// that must match to resume ("records", "batch_size", "world_size", "seed",
    /// "shuffle", "drop_last") and "version". Plain ints and bools: torch.save and
    /// json both take it.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let pos = {
            let p = lock(&self.progress);
            p.resume.or(p.current).unwrap_or(Position {
                epoch: p.epoch,
                batch: 0,
            })
        };
        let f = self.fingerprint;
        let d = PyDict::new(py);
        d.set_item("version", STATE_VERSION)?;
        d.set_item("epoch", pos.epoch)?;
        d.set_item("batch", pos.batch)?;
        d.set_item("records", f.records)?;
        d.set_item("batch_size", f.batch_size)?;
        d.set_item("world_size", f.world_size)?;
        d.set_item("seed", f.seed)?;
        d.set_item("shuffle", f.shuffle)?;
        d.set_item("drop_last", f.drop_last)?;
        Ok(d)
    }

    /// Resume from a state_dict(): the next iteration starts at its position. The
    /// loader's settings must be those the state was saved with (ValueError
    /// naming the one that differs otherwise). An iteration in progress is ended
    /// (its next step raises RuntimeError).
    fn load_state_dict(&self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
            state.get_item(key).map_err(|_| {
                errors::value(format!(
                    "state_dict has no {key:?}: not a supervision.Loader state"
                ))
            })
        };
        let int = |key: &str| -> PyResult<u64> {
            get(key)?.extract::<u64>().map_err(|_| {
                errors::value(format!("state_dict[{key:?}] must be a non-negative int"))
            })
        };
        let flag = |key: &str| -> PyResult<bool> {
            get(key)?
                .extract::<bool>()
                .map_err(|_| errors::value(format!("state_dict[{key:?}] must be a bool")))
        };
        let version = int("version")?;
        if version != STATE_VERSION {
            return Err(errors::value(format!(
                "state_dict version {version} is not {STATE_VERSION}, the one this supervision \
                 writes"
            )));
        }
        let f = self.fingerprint;
        let checks: [(&str, u64, u64); 4] = [
            ("records", int("records")?, f.records as u64),
            ("batch_size", int("batch_size")?, f.batch_size as u64),
            ("world_size", int("world_size")?, f.world_size as u64),
            ("seed", int("seed")?, f.seed),
        ];
        for (key, saved, now) in checks {
            if saved != now {
                return Err(errors::value(format!(
                    "state_dict was saved with {key}={saved} but this loader has {key}={now}"
                )));
            }
        }
        for (key, saved, now) in [
            ("shuffle", flag("shuffle")?, f.shuffle),
            ("drop_last", flag("drop_last")?, f.drop_last),
        ] {
            if saved != now {
                return Err(errors::value(format!(
                    "state_dict was saved with {key}={saved} but this loader has {key}={now}"
                )));
            }
        }
        let epoch = int("epoch")?;
        let batch = int("batch")?;
        if batch >= self.batches_per_epoch {
            return Err(errors::value(format!(
                "state_dict batch {batch} is past this loader's {} batches per epoch",
                self.batches_per_epoch
            )));
        }
        let mut p = lock(&self.progress);
        p.epoch = epoch;
        p.resume = Some(Position { epoch, batch });
        p.current = None;
        p.generation += 1;
        Ok(())
    }
}

/// Make `supervision.Loader` an instance of torch's IterableDataset (so that
/// `DataLoader(loader, batch_size=None)` iterates it) when torch is loaded: the
/// package's `_register_torch` does it. Failure to do so only loses that.
fn register_with_torch(py: Python<'_>) {
    if let Ok(m) = py.import("supervision") {
        let _ = m.call_method0("_register_torch");
    }
}

/// Evaluation's cut of the last batch.
#[derive(Debug, Clone, Copy)]
struct Trim {
    records: u64,
    batch_size: u64,
    rank: u64,
    world_size: u64,
}

impl Trim {
    /// How many of `indices` (the batch's kept samples, in order) are this rank's
    /// genuine records rather than the padding that wraps around. Evaluation reads in
    /// dataset order, so sample k of batch b was asked for record
    /// `slot = (b * batch + k) * world + rank` if `slot < records`, else padding.
    fn genuine(&self, batch: u64, indices: &[u64]) -> usize {
        let mut kept = indices.iter().peekable();
        let mut genuine = 0;
        for k in 0..self.batch_size {
            let slot = (batch * self.batch_size + k) * self.world_size + self.rank;
            let want = slot % self.records;
            if kept.peek() == Some(&&want) {
                kept.next();
                if slot < self.records {
                    genuine += 1;
                }
            }
        }
        genuine
    }
}

struct IterState {
    loader: Option<sv_pipeline::Loader>,
    done: bool,
}

/// One epoch of a Loader (what `iter(loader)` returns). Dropping it stops the
/// pipeline's threads.
#[pyclass(module = "supervision", name = "LoaderIter", frozen)]
pub struct LoaderIter {
    inner: Mutex<IterState>,
    pid: u32,
    start: Position,
    generation: u64,
    progress: Arc<Mutex<Progress>>,
    trim: Option<Trim>,
    with_info: bool,
    views: usize,
}

/// Wakes the consumer thread parked in [`next_batch`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Poll the pipeline for up to `slice`: `Some(item)` when the stream gave one,
/// `None` when the time ran out. Call with the GIL released.
fn next_batch(
    loader: &mut sv_pipeline::Loader,
    slice: Duration,
) -> Option<Option<Result<sv_pipeline::Batch, sv_pipeline::Error>>> {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + slice;
    loop {
        if let Poll::Ready(item) = futures_core::Stream::poll_next(Pin::new(&mut *loader), &mut cx)
        {
            return Some(item);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

impl LoaderIter {
    fn stale(&self) -> bool {
        lock(&self.progress).generation != self.generation
    }

    /// End the epoch: the pipeline is stopped (threads joined, GIL released) and,
    /// when it ran to its end, the loader moves on to the next epoch.
    fn finish(&self, py: Python<'_>, state: &mut IterState, complete: bool) {
        state.done = true;
        if let Some(l) = state.loader.take() {
            py.detach(move || drop(l));
        }
        if complete {
            let mut p = lock(&self.progress);
            if p.generation == self.generation {
                p.epoch = self.start.epoch + 1;
                p.current = None;
            }
        }
    }
}

#[pymethods]
impl LoaderIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.pid != pid() {
            return Err(forked("Loader iteration", self.pid));
        }
        let mut guard = self.inner.try_lock().map_err(|_| {
            PyRuntimeError::new_err(
                "this Loader iteration is already being advanced by another thread",
            )
        })?;
        let state = &mut *guard;
        if state.done {
            return Err(PyStopIteration::new_err(()));
        }
        if self.stale() {
            self.finish(py, state, false);
            return Err(PyRuntimeError::new_err(
                "this Loader iteration was superseded: a newer iteration started or \
                 load_state_dict() was called; iterate the Loader again",
            ));
        }
        let item = loop {
            let Some(loader) = state.loader.as_mut() else {
                return Err(PyStopIteration::new_err(()));
            };
            if let Some(item) = py.detach(|| next_batch(loader, WAIT_SLICE)) {
                break item;
            }
            // Ctrl-C (and any other signal handler) runs here; the epoch stays
            // where it is, so the loop may be resumed or the iterator dropped.
            py.check_signals()?;
        };
        let batch = match item {
            None => {
                self.finish(py, state, true);
                return Err(PyStopIteration::new_err(()));
            }
            Some(Err(e)) => {
                self.finish(py, state, false);
                return Err(errors::pipeline(&e));
            }
            Some(Ok(b)) => b,
        };
        {
            let mut p = lock(&self.progress);
            if p.generation == self.generation {
                p.current = Some(batch.next_position());
            }
        }
        self.to_python(py, batch)
    }
}

impl LoaderIter {
    /// (images, labels[, info]) for one batch; images view the batch's own buffer.
    fn to_python<'py>(
        &self,
        py: Python<'py>,
        mut batch: sv_pipeline::Batch,
    ) -> PyResult<Bound<'py, PyAny>> {
        let position = batch.position();
        let mut samples = batch.len();
        if let Some(t) = &self.trim {
            samples = samples.min(t.genuine(position.batch, batch.indices()));
        }
        let images = samples * self.views;
        let labels: Vec<i64> = batch.labels()[..samples]
            .iter()
            .map(|&l| i64::from(l))
            .collect();
        let info = if self.with_info {
            let d = PyDict::new(py);
            let indices: Vec<i64> = batch.indices()[..samples]
                .iter()
                .map(|&i| i as i64)
                .collect();
            d.set_item("indices", PyArray1::from_vec(py, indices))?;
            let lighting: Vec<Vec<f32>> = batch.lighting()[..images]
                .iter()
                .map(|l| l.to_vec())
                .collect();
            let lighting = if lighting.is_empty() {
                PyArray2::<f32>::zeros(py, [0, 3], false)
            } else {
                PyArray2::from_vec2(py, &lighting).map_err(|e| errors::value(e.to_string()))?
            };
            d.set_item("lighting", lighting)?;
            let flips: Vec<bool> = batch.windows()[..images].iter().map(|w| w.flip).collect();
            d.set_item("flip", PyArray1::from_vec(py, flips))?;
            d.set_item("position", (position.epoch, position.batch))?;
            Some(d)
        } else {
            None
        };
        let [_, a, b, c] = batch.shape();
        let dims: Vec<usize> = if self.views > 1 {
            vec![samples, self.views, a, b, c]
        } else {
            vec![samples, a, b, c]
        };
        let labels = PyArray1::from_vec(py, labels);
        let pixels = if let Some(p) = batch.pixels_u8_mut() {
            Pixels::U8(p.as_mut_ptr())
        } else if let Some(p) = batch.pixels_f32_mut() {
            Pixels::F32(p.as_mut_ptr())
        } else {
            return Err(PyRuntimeError::new_err("a batch without pixels"));
        };
        let address = match pixels {
            Pixels::U8(p) => p as usize,
            Pixels::F32(p) => p as usize,
        };
        let owner = Bound::new(
            py,
            BatchMemory {
                batch: Mutex::new(Some(batch)),
                pid: self.pid,
                address,
            },
        )?
        .into_any();
        // SAFETY: the pointers are the batch's pixel buffer, at least `dims`'
        // product long (`images() * crop * crop * 3` values, `samples <= len()`),
        // contiguous C order; `owner` keeps the batch (and so the buffer, a heap
        // allocation that does not move with the batch) alive for as long as the
        // array exists, as its base object, and nothing else reads or writes it
        // meanwhile (the pipeline gets it back only when the batch drops).
        let images = unsafe {
            match pixels {
                Pixels::U8(p) => view(&dims, p, owner)?,
                Pixels::F32(p) => view(&dims, p, owner)?,
            }
        };
        let tuple = match info {
            Some(d) => (images, labels.into_any(), d.into_any()).into_pyobject(py)?,
            None => (images, labels.into_any()).into_pyobject(py)?,
        };
        Ok(tuple.into_any())
    }
}

enum Pixels {
    U8(*mut u8),
    F32(*mut f32),
}

/// A numpy array of shape `dims` over `ptr`, kept alive by `owner`.
///
/// # Safety
/// `ptr` must point at `dims.iter().product()` initialised values that stay valid,
/// and are not otherwise accessed, while `owner` lives.
unsafe fn view<'py, T: Element>(
    dims: &[usize],
    ptr: *mut T,
    owner: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: as the caller promises.
    let v = unsafe { ArrayViewMut::from_shape_ptr(IxDyn(dims), ptr) };
    // SAFETY: `owner` becomes the array's base and keeps the memory alive.
    let a = unsafe { PyArray::borrow_from_array(&v, owner) };
    Ok(a.into_any())
}

/// The owner of one batch's memory: the base object of the arrays that view it.
/// Dropping it returns the batch's buffers to the pipeline's pool.
#[pyclass(module = "supervision", name = "BatchMemory", frozen)]
pub struct BatchMemory {
    batch: Mutex<Option<sv_pipeline::Batch>>,
    pid: u32,
    address: usize,
}

#[pymethods]
impl BatchMemory {
    /// Address of the batch's pixel buffer in the pipeline's pool (the images
    /// array's data pointer, as `images.ctypes.data` and a tensor's `data_ptr()`).
    #[getter]
    fn address(&self) -> usize {
        self.address
    }

    /// (epoch, batch) of the batch this memory holds.
    #[getter]
    fn position(&self) -> Option<(u64, u64)> {
        let b = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        b.as_ref().map(|b| {
            let p = b.position();
            (p.epoch, p.batch)
        })
    }
}

impl Drop for BatchMemory {
    fn drop(&mut self) {
        let batch = self.batch.get_mut().map_or(None, |b| b.take());
        if let Some(b) = batch
            && self.pid != pid()
        {
            // In a fork: returning the buffer would touch the parent's pipeline
            // (its channels' locks may be held by threads that do not exist here).
            std::mem::forget(b);
        }
    }
}

impl Drop for LoaderIter {
    fn drop(&mut self) {
        let state = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = state.loader.take() {
            if self.pid == pid() {
                // Joining the threads takes at most one batch's work: without the GIL.
                Python::attach(|py| py.detach(move || drop(l)));
            } else {
                // A fork: the threads are not here to join.
                std::mem::forget(l);
            }
        }
    }
}
