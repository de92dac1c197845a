//! Checkpoints: one safetensors file holding the weights (under the model's parameter
//! names), the momentum buffers (`momentum.<name>`) and, in the safetensors metadata
//! under the key `supervision`, a JSON [`CheckpointMeta`]: model description, class
//! list, input normalisation, schedule state, pipeline position, seed and the run's
//! settings, typed: `spec` ([`RunSpec`], what fixes the run) and `limits`
//! ([`RunLimits`], what the invocation that wrote it was asked for). PyTorch reads it
//! with `safetensors.torch.load_file`.
//!
//! Versions. 3 (written now) stores `spec` and `limits`; 2 and 1 stored both in one
//! flat `config` object, which is read into the two halves (see [`crate::config`]).
//!
//! Checksums (version 2). Two more metadata keys hold CRC-32s, as 8 lowercase hex
//! digits: `supervision.tensor_crc32`, a JSON object with the CRC of every tensor's
//! bytes by name, and `supervision.crc32`, the CRC of the `supervision` JSON, a
//! newline and the `supervision.tensor_crc32` JSON. [`load`] checks both and
//! refuses a file whose metadata or any tensor changed (naming the tensor), a
//! tensor without a checksum and a checksum without a tensor. Files of version 1
//! (written before the checksums) load unchecked, with a warning.
//!
//! Writes are atomic (sv-core's `AtomicFile`: a temporary name in the same directory,
//! fsynced, renamed over the final name, the directory fsynced); a crash leaves either
//! the old file or the new one, never a torn one.
//!
//! Off the training thread. [`HostCheckpoint::capture`] copies the flat weight and
//! velocity buffers to the host (the only part that waits for the device); the
//! [`CheckpointWriter`] then serialises, writes and syncs on a background thread while
//! training continues, one checkpoint at a time and in order.
//!
//! History ([`keep_epoch`], timm's `--checkpoint-hist`): at each epoch end the fresh
//! `last.safetensors` is also kept as `epoch-NNNN.safetensors` (NNNN: epochs done, from
//! 1), a hard link when the file system allows (no copy of the bytes), and only the
//! newest N of those stay; an older one is deleted only after the new one is in place.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use sv_core::ClassInfo;
use tch::{Device, Kind, Tensor};

use crate::config::{RunLimits, RunSpec, TrainConfig};
use crate::error::{Result, TorchContext, TrainError, io_err};
use crate::input::{Normalization, PixelMean};
use crate::model::ModelSpec;
use crate::optim::ScalerState;
use crate::params::ParamStore;
use crate::schedule::Schedule;
use crate::window::Totals;
use std::collections::BTreeMap;
use std::time::Duration;
use sv_core::fs::AtomicFile;

/// Identifies our checkpoints inside the metadata.
pub const CHECKPOINT_FORMAT: &str = "supervision-checkpoint";
/// Metadata layout version (2: with checksums; 3: the settings typed as `spec` and
/// `limits`).
pub const CHECKPOINT_VERSION: u32 = 3;
/// The version written before checksums existed, still read (unchecked).
const UNCHECKED_VERSION: u32 = 1;
const META_KEY: &str = "supervision";
const TENSOR_CRC_KEY: &str = "supervision.tensor_crc32";
const META_CRC_KEY: &str = "supervision.crc32";
/// The largest safetensors header (safetensors' own limit, named in messages).
const MAX_HEADER: u64 = 100_000_000;
const MOMENTUM_PREFIX: &str = "momentum.";
/// The tensor holding [`Normalization::mean_image`] (`[3, side, side]`), when set.
pub const MEAN_IMAGE_TENSOR: &str = "input.mean_image";

/// Everything besides the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredMeta")]
pub struct CheckpointMeta {
    /// Always [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// [`CHECKPOINT_VERSION`].
    pub version: u32,
    /// The model description (architecture, classes, init).
    pub model: ModelSpec,
    /// Class ids and names, in label order.
    pub classes: Vec<ClassInfo>,
    /// Input normalisation the model was trained with.
    pub normalization: Normalization,
    /// Optimiser steps taken.
    pub step: u64,
    /// Epoch to continue in (0-based).
    pub epoch: u64,
    /// Next batch index within `epoch`.
    pub batch_in_epoch: u64,
    /// Learning-rate schedule state.
    pub schedule: Schedule,
    /// Seed of the run (data order, augmentation, dropout).
    pub seed: u64,
    /// What fixes the run (a resumed run keeps it).
    pub spec: RunSpec,
    /// What the invocation that wrote it was asked for (a resumed run takes its own).
    pub limits: RunLimits,
    /// Best validation top-1 error so far (decides when best.safetensors is written).
    pub best_top1: Option<f64>,
    /// The fp16 loss scaler's state, when the run trains in fp16.
    pub loss_scale: Option<ScalerState>,
    /// Ranks of the data-parallel job that wrote it (1 for one process, and for files
    /// written before this field existed): a resumed run must have as many.
    pub world_size: usize,
    /// The running sums of the epoch in progress up to `step` (a checkpoint written
    /// inside an epoch), so a resumed run reports the whole epoch's mean loss and
    /// throughput; None at an epoch boundary and in older files.
    pub epoch_sums: Option<EpochSums>,
}

/// The metadata as files of every version hold it: `spec` and `limits` (version 3),
/// or one flat `config` (versions 1 and 2).
#[derive(Deserialize)]
struct StoredMeta {
    format: String,
    version: u32,
    model: ModelSpec,
    classes: Vec<ClassInfo>,
    normalization: Normalization,
    step: u64,
    epoch: u64,
    batch_in_epoch: u64,
    schedule: Schedule,
    seed: u64,
    #[serde(default)]
    spec: Option<RunSpec>,
    #[serde(default)]
    limits: Option<RunLimits>,
    #[serde(default)]
    config: Option<TrainConfig>,
    #[serde(default)]
    best_top1: Option<f64>,
    #[serde(default)]
    loss_scale: Option<ScalerState>,
    #[serde(default = "one_rank")]
    world_size: usize,
    #[serde(default)]
    epoch_sums: Option<EpochSums>,
}

impl TryFrom<StoredMeta> for CheckpointMeta {
    type Error = String;

    fn try_from(m: StoredMeta) -> std::result::Result<Self, String> {
        let (spec, limits) = match (m.spec, m.limits, m.config) {
            (Some(spec), Some(limits), _) => (spec, limits),
            (_, _, Some(config)) => (config.spec(), config.limits()),
            _ => {
                return Err(format!(
                    "version {} metadata without the run's settings (`spec` and `limits`, or \
                     `config`)",
                    m.version
                ));
            }
        };
        Ok(CheckpointMeta {
            format: m.format,
            version: m.version,
            model: m.model,
            classes: m.classes,
            normalization: m.normalization,
            step: m.step,
            epoch: m.epoch,
            batch_in_epoch: m.batch_in_epoch,
            schedule: m.schedule,
            seed: m.seed,
            spec,
            limits,
            best_top1: m.best_top1,
            loss_scale: m.loss_scale,
            world_size: m.world_size,
            epoch_sums: m.epoch_sums,
        })
    }
}

impl CheckpointMeta {
    /// The side of the stored square images the model was trained on (crops were
    /// taken from images of this side), when the checkpoint says: its data settings,
    /// else its mean image. Evaluation must see images of this side.
    pub fn trained_side(&self) -> Option<u32> {
        self.spec
            .data
            .as_ref()
            .map(|d| d.side)
            .or_else(|| self.normalization.mean_image.as_ref().map(|m| m.side))
    }

    /// The run's settings in one [`TrainConfig`] (its spec, and the limits of the
    /// invocation that wrote it).
    pub fn config(&self) -> TrainConfig {
        TrainConfig::from_parts(self.spec.clone(), self.limits.clone())
    }
}

/// The sums a training epoch accumulates ([`Totals`]), as a checkpoint keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    /// Steps taken in the epoch.
    pub steps: u64,
    /// Images trained on.
    pub images: u64,
    /// Sum of the steps' mean losses.
    pub loss_sum: f64,
    /// Wall time of the steps, seconds.
    pub seconds: f64,
    /// Of which waiting for data, seconds.
    pub waited_seconds: f64,
}

impl From<&Totals> for EpochSums {
    fn from(t: &Totals) -> EpochSums {
        EpochSums {
            steps: t.steps,
            images: t.images,
            loss_sum: t.loss_sum,
            seconds: t.time.as_secs_f64(),
            waited_seconds: t.waited.as_secs_f64(),
        }
    }
}

impl From<EpochSums> for Totals {
    fn from(s: EpochSums) -> Totals {
        let secs = |v: f64| Duration::try_from_secs_f64(v).unwrap_or_default();
        Totals {
            steps: s.steps,
            images: s.images,
            loss_sum: s.loss_sum,
            time: secs(s.seconds),
            waited: secs(s.waited_seconds),
        }
    }
}

fn one_rank() -> usize {
    1
}

/// A checkpoint in memory (tensors on the CPU).
pub struct Checkpoint {
    /// Metadata.
    pub meta: CheckpointMeta,
    /// Parameters by name, in model order.
    pub params: Vec<(String, Tensor)>,
    /// Momentum buffers by parameter name (empty for weights-only files).
    pub velocities: Vec<(String, Tensor)>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("meta", &self.meta)
            .field("tensors", &self.params.len())
            .finish()
    }
}

// Host f32s are written to the file as they lie in memory; safetensors is
// little-endian, as are the machines libtorch runs on.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "checkpoints are written in host byte order, which must be little-endian"
);

/// A flat fp32 buffer copied to the host.
struct HostBuffer(Vec<f32>);

impl HostBuffer {
    /// One copy from `t` (any device, fp32, `[numel]`) into host memory.
    fn capture(t: &Tensor, what: &str) -> Result<HostBuffer> {
        let n = t.numel();
        let mut host = vec![0f32; n];
        // SAFETY: `host` holds exactly `n` f32s and outlives the blob, which is dropped
        // at the end of this block; the copy into it is complete when copy_ returns.
        let blob = unsafe {
            Tensor::f_from_blob(
                host.as_mut_ptr().cast::<u8>(),
                &[n as i64],
                &[],
                Kind::Float,
                Device::Cpu,
            )
        };
        blob.and_then(|mut b| b.f_copy_(&t.f_detach()?.f_to_kind(Kind::Float)?))
            .ctx(|| format!("copy the {what} to the host"))?;
        Ok(HostBuffer(host))
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: f32 has no padding and every byte pattern is a valid u8; the slice
        // covers exactly the vector's initialised elements.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.0.len() * 4) }
    }
}

/// One tensor of a checkpoint: a byte range of one of its host buffers.
struct Entry {
    name: String,
    shape: Vec<usize>,
    buffer: usize,
    bytes: std::ops::Range<usize>,
}

struct EntryView<'a> {
    shape: &'a [usize],
    data: &'a [u8],
}

impl View for EntryView<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A checkpoint's contents on the host, ready to be written by any thread.
pub struct HostCheckpoint {
    meta: CheckpointMeta,
    buffers: Vec<HostBuffer>,
    entries: Vec<Entry>,
}

impl std::fmt::Debug for HostCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCheckpoint")
            .field("step", &self.meta.step)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

impl HostCheckpoint {
    /// Copies the master weights of `store` and the flat `velocity` to the host: the
    /// part of a checkpoint that waits for the device.
    pub fn capture(
        meta: CheckpointMeta,
        store: &ParamStore,
        velocity: &Tensor,
    ) -> Result<HostCheckpoint> {
        let mut buffers = vec![
            HostBuffer::capture(store.master(), "weights")?,
            HostBuffer::capture(velocity, "velocity")?,
        ];
        let mut entries = Vec::with_capacity(store.slots().len() * 2 + 1);
        for (buffer, prefix) in [(0, ""), (1, MOMENTUM_PREFIX)] {
            for slot in store.slots() {
                let start = slot.offset as usize * 4;
                entries.push(Entry {
                    name: format!("{prefix}{}", slot.name),
                    shape: slot.shape.iter().map(|&d| d as usize).collect(),
                    buffer,
                    bytes: start..start + slot.numel as usize * 4,
                });
            }
        }
        if let Some(m) = &meta.normalization.mean_image {
            let side = m.side as usize;
            buffers.push(HostBuffer(m.chw.to_vec()));
            entries.push(Entry {
                name: MEAN_IMAGE_TENSOR.to_string(),
                shape: vec![3, side, side],
                buffer: buffers.len() - 1,
                bytes: 0..m.chw.len() * 4,
            });
        }
        Ok(HostCheckpoint {
            meta,
            buffers,
            entries,
        })
    }

    /// Keeps the running sums of the epoch in progress (see
    /// [`CheckpointMeta::epoch_sums`]); empty sums (an epoch boundary) keep none.
    pub fn set_epoch_sums(&mut self, totals: &Totals) {
        self.meta.epoch_sums = (totals.steps > 0).then(|| EpochSums::from(totals));
    }

    /// The metadata: the `supervision` JSON, each tensor's CRC-32 and the CRC over
    /// both (see the module header).
    fn metadata(&self, path: &Path) -> Result<HashMap<String, String>> {
        let json = serde_json::to_string(&self.meta).map_err(|e| TrainError::Json {
            path: path.into(),
            source: e,
        })?;
        let crcs: BTreeMap<&str, String> = self
            .entries
            .iter()
            .map(|e| {
                let crc = crc32fast::hash(&self.buffers[e.buffer].bytes()[e.bytes.clone()]);
                (e.name.as_str(), format!("{crc:08x}"))
            })
            .collect();
        let crcs = serde_json::to_string(&crcs).map_err(|e| TrainError::Json {
            path: path.into(),
            source: e,
        })?;
        let meta_crc = format!("{:08x}", meta_crc(&json, &crcs));
        Ok(HashMap::from([
            (META_KEY.to_string(), json),
            (TENSOR_CRC_KEY.to_string(), crcs),
            (META_CRC_KEY.to_string(), meta_crc),
        ]))
    }

    /// Writes the checkpoint atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let info = Some(self.metadata(path)?);
        let views = self.entries.iter().map(|e| {
            let view = EntryView {
                shape: &e.shape,
                data: &self.buffers[e.buffer].bytes()[e.bytes.clone()],
            };
            (e.name.as_str(), view)
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let file = AtomicFile::create(path)?;
        safetensors::tensor::serialize_to_file(views, &info, file.temp_path()).map_err(
            |e| match e {
                // A full disk or a permission problem keeps its cause, in words; the
                // temporary file goes with `file`.
                safetensors::SafeTensorError::IoError(source) => TrainError::Io {
                    path: path.into(),
                    source,
                },
                other => TrainError::Checkpoint {
                    path: path.into(),
                    what: format!("cannot be written: {}", describe(&other)),
                },
            },
        )?;
        file.commit()?;
        Ok(())
    }
}

/// Writes checkpoints on a background thread, one at a time, in the order given.
#[derive(Debug, Default)]
pub struct CheckpointWriter {
    current: Option<(PathBuf, std::thread::JoinHandle<Result<()>>)>,
}

impl CheckpointWriter {
    /// A writer with nothing in flight.
    pub fn new() -> CheckpointWriter {
        CheckpointWriter::default()
    }

    /// Waits for the write in flight (reporting its failure), then starts writing `ck`
    /// to `path`.
    pub fn write(&mut self, path: &Path, ck: HostCheckpoint) -> Result<()> {
        self.finish()?;
        let target = path.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("sv-checkpoint".into())
            .spawn(move || ck.write(&target))
            .map_err(|_| TrainError::Thread("sv-checkpoint"))?;
        self.current = Some((path.to_path_buf(), handle));
        Ok(())
    }

    /// Runs `job` on the background thread once the write in flight has succeeded (at
    /// once when none is in flight); a failed write skips it. Its error comes back
    /// through [`CheckpointWriter::finish`] like the write's.
    pub fn then(&mut self, job: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
        let Some((path, previous)) = self.current.take() else {
            return job();
        };
        let handle = std::thread::Builder::new()
            .name("sv-checkpoint".into())
            .spawn(move || {
                previous
                    .join()
                    .map_err(|_| TrainError::Thread("sv-checkpoint"))??;
                job()
            })
            .map_err(|_| TrainError::Thread("sv-checkpoint"))?;
        self.current = Some((path, handle));
        Ok(())
    }

    /// Waits for the write in flight; its error if it failed.
    pub fn finish(&mut self) -> Result<()> {
        match self.current.take() {
            None => Ok(()),
            Some((_, h)) => h.join().map_err(|_| TrainError::Thread("sv-checkpoint"))?,
        }
    }

    /// The file being written, if any.
    pub fn in_flight(&self) -> Option<&Path> {
        self.current.as_ref().map(|(p, _)| p.as_path())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        // Let a checkpoint being written reach the disk; a failure here has nobody to
        // go to (run() reports through finish).
        let _ = self.finish();
    }
}

/// The CRC over a checkpoint's metadata: the `supervision` JSON, a newline, the
/// tensor checksums' JSON.
fn meta_crc(json: &str, crcs: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(json.as_bytes());
    h.update(b"\n");
    h.update(crcs.as_bytes());
    h.finalize()
}

/// A CRC written as exactly 8 lowercase hex digits (as sv-shard reads them).
fn parse_crc(text: &str) -> Option<u32> {
    let hex = text.len() == 8 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex.then(|| u32::from_str_radix(text, 16).ok()).flatten()
}

/// safetensors' errors in words (its `Display` prints the variant's Debug text).
fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "shorter than a safetensors header (8 bytes)".into(),
        E::HeaderTooLarge => {
            format!("its header length is more than the {MAX_HEADER} bytes safetensors allows")
        }
        E::InvalidHeaderLength => "its header length runs past the end of the file".into(),
        E::InvalidHeader => "its header is not UTF-8 text".into(),
        E::InvalidHeaderStart => "its header does not start with `{`".into(),
        E::InvalidHeaderDeserialization => "its header is not a safetensors JSON table".into(),
        E::TensorNotFound(name) => format!("no tensor `{name}`"),
        E::TensorInvalidInfo => "a tensor's shape, type and offsets disagree".into(),
        E::InvalidOffset(name) => format!("the offsets of tensor `{name}` are out of order"),
        E::IoError(io) => format!("input/output error: {io}"),
        E::JsonError(json) => format!("JSON error: {json}"),
        E::InvalidTensorView(dtype, shape, bytes) => {
            format!("a tensor of type {dtype:?} and shape {shape:?} cannot hold {bytes} bytes")
        }
        E::MetadataIncompleteBuffer => {
            "the tensors do not cover the file exactly (truncated, or bytes appended)".into()
        }
        E::ValidationOverflow => "a tensor's size overflows".into(),
    }
}

/// A checkpoint's metadata, checked against its checksum.
#[derive(Clone, Debug)]
pub struct CheckpointHeader {
    /// The run's metadata.
    pub meta: CheckpointMeta,
    /// The CRC-32 of each tensor's bytes by name; None for a file written before
    /// checksums existed (version 1).
    pub tensor_crcs: Option<BTreeMap<String, u32>>,
}

impl CheckpointHeader {
    /// Parses and checks the safetensors metadata of the checkpoint `path`.
    fn parse(path: &Path, metadata: Option<&HashMap<String, String>>) -> Result<Self> {
        let bad = |what: String| TrainError::Checkpoint {
            path: path.into(),
            what,
        };
        let get = |key: &str| metadata.and_then(|m| m.get(key));
        let json = get(META_KEY).ok_or_else(|| {
            bad("no `supervision` metadata: not written by supervision train".into())
        })?;
        let meta: CheckpointMeta = serde_json::from_str(json).map_err(|e| TrainError::Json {
            path: path.into(),
            source: e,
        })?;
        if meta.format != CHECKPOINT_FORMAT
            || !(UNCHECKED_VERSION..=CHECKPOINT_VERSION).contains(&meta.version)
        {
            return Err(bad(format!(
                "format {} v{}, expected {CHECKPOINT_FORMAT} v{UNCHECKED_VERSION} to v{CHECKPOINT_VERSION}",
                meta.format, meta.version
            )));
        }
        if meta.classes.len() as i64 != meta.model.classes {
            return Err(bad(format!(
                "its class list has {} classes but its model {}",
                meta.classes.len(),
                meta.model.classes
            )));
        }
        if meta.version == UNCHECKED_VERSION {
            tracing::warn!(
                "{}: written before checkpoints had checksums; its contents cannot be checked",
                path.display()
            );
            return Ok(CheckpointHeader {
                meta,
                tensor_crcs: None,
            });
        }
        let (Some(crcs_json), Some(stored)) = (get(TENSOR_CRC_KEY), get(META_CRC_KEY)) else {
            return Err(bad(format!(
                "version {} without its checksums (`{TENSOR_CRC_KEY}`, `{META_CRC_KEY}`): damaged",
                meta.version
            )));
        };
        let stored = parse_crc(stored)
            .ok_or_else(|| bad(format!("`{META_CRC_KEY}` is {stored:?}, not a CRC-32")))?;
        let computed = meta_crc(json, crcs_json);
        if computed != stored {
            return Err(bad(format!(
                "its metadata is damaged (checksum stored {stored:08x}, computed {computed:08x})"
            )));
        }
        let texts: BTreeMap<String, String> =
            serde_json::from_str(crcs_json).map_err(|e| TrainError::Json {
                path: path.into(),
                source: e,
            })?;
        let mut crcs = BTreeMap::new();
        for (name, text) in texts {
            let crc = parse_crc(&text).ok_or_else(|| {
                bad(format!(
                    "the checksum of `{name}` is {text:?}, not a CRC-32"
                ))
            })?;
            crcs.insert(name, crc);
        }
        Ok(CheckpointHeader {
            meta,
            tensor_crcs: Some(crcs),
        })
    }
}

/// Opens a checkpoint file for reading: a regular file (a FIFO or a folder is named
/// as such, never waited on).
fn open(path: &Path) -> Result<std::fs::File> {
    Ok(sv_core::fs::open_regular(path)?)
}

/// Maps a checkpoint file into memory: the safetensors crate parses the header in
/// place and the tensors are copied once, from the page cache into libtorch, never
/// read whole into a buffer first. Checkpoints are replaced by rename, never rewritten
/// in place, so the mapped file does not change under the map.
fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file = open(path)?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len < 8 {
        // an empty file cannot be mapped; a short one is not a safetensors file either
        return Err(TrainError::Checkpoint {
            path: path.into(),
            what: format!(
                "not a safetensors file: {}",
                describe(&safetensors::SafeTensorError::HeaderTooSmall)
            ),
        });
    }
    // SAFETY: the map is read only; a checkpoint is never truncated in place (see
    // above), so its pages stay valid while the map lives.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))
}

/// The safetensors metadata of the mapped checkpoint `bytes`, checked against its
/// checksum, with the file's tensor table.
fn parse_mapped<'a>(path: &Path, bytes: &'a [u8]) -> Result<(CheckpointHeader, SafeTensors<'a>)> {
    let bad = |what: String| TrainError::Checkpoint {
        path: path.into(),
        what: format!("not a safetensors file: {what}"),
    };
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| bad(describe(&e)))?;
    let header = CheckpointHeader::parse(path, metadata.metadata().as_ref())?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| TrainError::Checkpoint {
        path: path.into(),
        what: format!("corrupt tensor table: {}", describe(&e)),
    })?;
    Ok((header, st))
}

/// Reads only a checkpoint's metadata (checked against its checksum), without reading
/// its tensors: what `--resume` compares its flags with.
pub fn read_header(path: &Path) -> Result<CheckpointHeader> {
    let bytes = map(path)?;
    Ok(parse_mapped(path, &bytes)?.0)
}

/// The history checkpoint written when `done` epochs are complete.
pub fn epoch_checkpoint_name(done: u64) -> String {
    format!("epoch-{done:04}.safetensors")
}

/// The number of epochs in a history checkpoint's file name (`None`: not one).
pub fn epoch_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("epoch-")?.strip_suffix(".safetensors")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Keeps the checkpoint `last` (just written at the end of epoch `done`, counted from 1)
/// as `dir/epoch-NNNN.safetensors`, then deletes the history checkpoints of epochs
/// `done - keep` and earlier, so the newest `keep` remain. History files of later
/// epochs (a run resumed from an older checkpoint) are left alone; they are replaced
/// when the run gets there. `keep == 0` keeps no history and touches nothing. Returns
/// the path written.
pub fn keep_epoch(dir: &Path, last: &Path, done: u64, keep: usize) -> Result<Option<PathBuf>> {
    if keep == 0 {
        return Ok(None);
    }
    let name = epoch_checkpoint_name(done);
    let path = dir.join(&name);
    // `last` is replaced by rename, never rewritten in place, so a hard link keeps this
    // epoch's bytes after `last` moves on: linked under a temporary name, renamed over
    // the final one, the folder synced. Where links are refused, a copy through the
    // project's atomic writer.
    let tmp = dir.join(format!(".{name}.{}.link.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(last, &tmp).is_ok() {
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(&path)(e));
        }
        sv_core::fs::sync_dir(dir)?;
    } else {
        let mut src = sv_core::fs::open_regular(last)?;
        let mut out = AtomicFile::create(&path)?;
        std::io::copy(&mut src, &mut out).map_err(io_err(out.temp_path()))?;
        out.commit()?;
    }
    let oldest_kept = done.saturating_sub(keep as u64 - 1);
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let file = entry.file_name();
        if let Some(n) = file.to_str().and_then(epoch_of)
            && n < oldest_kept
        {
            let old = entry.path();
            std::fs::remove_file(&old).map_err(io_err(&old))?;
        }
    }
    Ok(Some(path))
}

/// Reads a checkpoint (tensors land on the CPU), checking its metadata and every
/// tensor against their checksums.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = map(path)?;
    let bad = |what: String| TrainError::Checkpoint {
        path: path.into(),
        what,
    };
    let (header, st) = parse_mapped(path, &bytes)?;
    let mut meta = header.meta;
    let mut params = Vec::new();
    let mut velocities = Vec::new();
    let mut entries = st.tensors();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(crcs) = &header.tensor_crcs {
        for (name, view) in &entries {
            let stored = crcs
                .get(name)
                .ok_or_else(|| bad(format!("tensor `{name}` has no checksum: damaged or added")))?;
            let computed = crc32fast::hash(view.data());
            if computed != *stored {
                return Err(bad(format!(
                    "tensor `{name}` is damaged (checksum stored {stored:08x}, computed {computed:08x})"
                )));
            }
        }
        if let Some(missing) = crcs.keys().find(|n| !entries.iter().any(|(e, _)| e == *n)) {
            return Err(bad(format!(
                "tensor `{missing}` is missing (its checksum is there)"
            )));
        }
    }
    for (name, view) in entries {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            )));
        }
        if name == MEAN_IMAGE_TENSOR {
            let side = match view.shape() {
                &[3, h, w] if h == w => u32::try_from(h).ok(),
                _ => None,
            }
            .ok_or_else(|| {
                bad(format!(
                    "`{name}` is {:?}, expected [3, S, S]",
                    view.shape()
                ))
            })?;
            let chw = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let m = PixelMean::new(side, chw).map_err(|e| bad(format!("`{name}`: {e}")))?;
            meta.normalization.mean_image = Some(m);
            continue;
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, Kind::Float)
            .ctx(|| format!("read `{name}`"))?;
        match name.strip_prefix(MOMENTUM_PREFIX) {
            Some(param) => velocities.push((param.to_string(), t)),
            None => params.push((name, t)),
        }
    }
    Ok(Checkpoint {
        meta,
        params,
        velocities,
    })
}

impl Checkpoint {
    /// The velocities in the order of `names` (the model's parameter order).
    pub fn velocities_for(&self, names: &[String], path: &Path) -> Result<Vec<Tensor>> {
        names
            .iter()
            .map(|n| {
                self.velocities
                    .iter()
                    .find(|(v, _)| v == n)
                    .map(|(_, t)| t.shallow_clone())
                    .ok_or_else(|| TrainError::Checkpoint {
                        path: path.into(),
                        what: format!("missing momentum for `{n}`"),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Stands in for save(): a new file renamed over `last`, as save() does.
    fn write_last(dir: &Path, body: &str) -> PathBuf {
        let last = dir.join("last.safetensors");
        let tmp = dir.join(".last.tmp");
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, &last).unwrap();
        last
    }

    #[test]
    fn history_keeps_the_newest_epochs_with_their_own_bytes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("best.safetensors"), "best").unwrap();
        std::fs::write(d.path().join("epoch-notes.safetensors"), "x").unwrap();
        for done in 1..=5 {
            let last = write_last(d.path(), &format!("after epoch {done}"));
            let kept = keep_epoch(d.path(), &last, done, 2).unwrap().unwrap();
            assert_eq!(kept, d.path().join(epoch_checkpoint_name(done)));
        }
        assert_eq!(
            names(d.path()),
            [
                "best.safetensors",
                "epoch-0004.safetensors",
                "epoch-0005.safetensors",
                "epoch-notes.safetensors",
                "last.safetensors"
            ]
        );
        let read = |n: &str| std::fs::read_to_string(d.path().join(n)).unwrap();
        assert_eq!(read("epoch-0004.safetensors"), "after epoch 4");
        assert_eq!(read("epoch-0005.safetensors"), "after epoch 5");
        assert_eq!(read("last.safetensors"), "after epoch 5");
    }

    #[test]
    fn history_off_and_resumed_runs() {
        let d = tempfile::tempdir().unwrap();
        let last = write_last(d.path(), "a");
        assert_eq!(keep_epoch(d.path(), &last, 1, 0).unwrap(), None);
        assert_eq!(names(d.path()), ["last.safetensors"]);
        // A run resumed from epoch 2 while epochs 3 and 9 are on disk from before: 9 is
        // left alone, 3 is replaced when reached.
        for n in [1, 2, 3, 9] {
            std::fs::write(d.path().join(epoch_checkpoint_name(n)), "old").unwrap();
        }
        let last = write_last(d.path(), "new 3");
        keep_epoch(d.path(), &last, 3, 2).unwrap();
        assert_eq!(
            names(d.path()),
            [
                "epoch-0002.safetensors",
                "epoch-0003.safetensors",
                "epoch-0009.safetensors",
                "last.safetensors"
            ]
        );
        let read = |n: &str| std::fs::read_to_string(d.path().join(n)).unwrap();
        assert_eq!(read("epoch-0003.safetensors"), "new 3");
        assert_eq!(read("epoch-0009.safetensors"), "old");
    }

    #[test]
    fn only_history_names_count() {
        assert_eq!(epoch_of("epoch-0012.safetensors"), Some(12));
        assert_eq!(epoch_of("epoch-12345.safetensors"), Some(12345));
        for bad in [
            "epoch-.safetensors",
            "epoch-1a.safetensors",
            "epoch-0001.pt",
            "best.safetensors",
            "epoch-+1.safetensors",
        ] {
            assert_eq!(epoch_of(bad), None, "{bad}");
        }
    }
}
