//! Checkpoints: one safetensors file holding the weights (under the model's parameter
//! names), the momentum buffers (`momentum.<name>`) and, in the safetensors metadata
//! under the key `supervision`, a JSON [`CheckpointMeta`]: model description, class
//! list, input normalisation, schedule state, pipeline position, seed and the training
//! configuration. PyTorch reads it with `safetensors.torch.load_file`.
//!
//! Writes are atomic (sv-core's `AtomicFile`: a temporary name in the same directory,
//! fsynced, renamed over the final name, the directory fsynced); a crash leaves either
//! the old file or the new one, never a torn one.
//!
//! Off the training thread. [`HostCheckpoint::capture`] copies the flat weight and
//! velocity buffers to the host (the only part that waits for the device); the
//! [`CheckpointWriter`] then serialises, writes and syncs on a background thread while
//! training continues, one checkpoint at a time and in order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use sv_core::ClassInfo;
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TorchContext, TrainError, io_err};
use crate::input::{Normalization, PixelMean};
use crate::model::ModelSpec;
use crate::optim::ScalerState;
use crate::params::ParamStore;
use crate::schedule::Schedule;
use sv_core::fs::AtomicFile;

/// Identifies our checkpoints inside the metadata.
pub const CHECKPOINT_FORMAT: &str = "supervision-checkpoint";
/// Metadata layout version.
pub const CHECKPOINT_VERSION: u32 = 1;
const META_KEY: &str = "supervision";
const MOMENTUM_PREFIX: &str = "momentum.";
/// The tensor holding [`Normalization::mean_image`] (`[3, side, side]`), when set.
pub const MEAN_IMAGE_TENSOR: &str = "input.mean_image";

/// Everything besides the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The training configuration, as JSON, for the record.
    pub config: serde_json::Value,
    /// Best validation top-1 error so far (decides when best.safetensors is written).
    #[serde(default)]
    pub best_top1: Option<f64>,
    /// The fp16 loss scaler's state, when the run trains in fp16.
    #[serde(default)]
    pub loss_scale: Option<ScalerState>,
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

    /// Writes the checkpoint atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string(&self.meta).map_err(|e| TrainError::Json {
            path: path.into(),
            source: e,
        })?;
        let info = Some(HashMap::from([(META_KEY.to_string(), json)]));
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
                // A full disk or a permission problem keeps its cause, in words.
                safetensors::SafeTensorError::IoError(source) => TrainError::Io {
                    path: file.temp_path().to_path_buf(),
                    source,
                },
                other => TrainError::Checkpoint {
                    path: path.into(),
                    what: format!("cannot be written: {other}"),
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

/// Reads a checkpoint (tensors land on the CPU).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let bad = |what: String| TrainError::Checkpoint {
        path: path.into(),
        what,
    };
    let (_, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e:?})")))?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| bad("no `supervision` metadata: not written by supervision train".into()))?;
    let meta: CheckpointMeta = serde_json::from_str(json).map_err(|e| TrainError::Json {
        path: path.into(),
        source: e,
    })?;
    if meta.format != CHECKPOINT_FORMAT || meta.version != CHECKPOINT_VERSION {
        return Err(bad(format!(
            "format {} v{}, expected {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION}",
            meta.format, meta.version
        )));
    }
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("corrupt tensor table ({e:?})")))?;
    let mut meta = meta;
    let mut params = Vec::new();
    let mut velocities = Vec::new();
    let mut entries = st.tensors();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
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
