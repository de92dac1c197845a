//! Checkpoints: one safetensors file holding the weights (under the model's parameter
//! names), the momentum buffers (`momentum.<name>`) and, in the safetensors metadata
//! under the key `supervision`, a JSON [`CheckpointMeta`]: model description, class
//! list, input normalisation, schedule state, pipeline position, seed and the training
//! configuration. PyTorch reads it with `safetensors.torch.load_file`.
//!
//! Writes are atomic: the file is written under a temporary name in the same directory,
//! fsynced, renamed over the final name, and the directory is fsynced; a crash leaves
//! either the old file or the new one, never a torn one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use sv_core::ClassInfo;
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TorchContext, TrainError, io_err};
use crate::input::{Normalization, PixelMean};
use crate::model::ModelSpec;
use crate::schedule::Schedule;

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

struct HostTensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_host(t: &Tensor, name: &str) -> Result<HostTensor> {
    let t = t
        .f_detach()
        .and_then(|t| t.f_to_device(Device::Cpu))
        .and_then(|t| t.f_to_kind(Kind::Float))
        .and_then(|t| t.f_contiguous())
        .ctx(|| format!("copy `{name}` to the host"))?;
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * 4];
    t.f_copy_data_u8(&mut bytes, numel)
        .ctx(|| format!("read `{name}`"))?;
    let shape = t.size().iter().map(|&d| d as usize).collect();
    Ok(HostTensor { shape, bytes })
}

/// Writes a checkpoint atomically to `path`.
pub fn save(
    path: &Path,
    meta: &CheckpointMeta,
    names: &[String],
    params: &[Tensor],
    velocities: &[Tensor],
) -> Result<()> {
    let mut host = Vec::with_capacity(names.len() * 2);
    for (name, p) in names.iter().zip(params) {
        host.push((name.clone(), to_host(p, name)?));
    }
    for (name, v) in names.iter().zip(velocities) {
        host.push((format!("{MOMENTUM_PREFIX}{name}"), to_host(v, name)?));
    }
    if let Some(m) = &meta.normalization.mean_image {
        let side = m.side as usize;
        host.push((
            MEAN_IMAGE_TENSOR.to_string(),
            HostTensor {
                shape: vec![3, side, side],
                bytes: m.chw.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
        ));
    }
    let json = serde_json::to_string(meta).map_err(|e| TrainError::Json {
        path: path.into(),
        source: e,
    })?;
    let info = Some(HashMap::from([(META_KEY.to_string(), json)]));
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // One atomic write for the whole project: temporary file in the same folder,
    // fsync, rename, folder fsync; the temporary file is removed on any error.
    let fs_err = |e: sv_core::fs::FsError| match e {
        sv_core::fs::FsError::Io { path, source, .. } => TrainError::Io { path, source },
        other => TrainError::Checkpoint {
            path: other.path().to_path_buf(),
            what: other.to_string(),
        },
    };
    let file = sv_core::fs::AtomicFile::create(path).map_err(fs_err)?;
    let views = host.iter().map(|(n, h)| (n.as_str(), h));
    safetensors::tensor::serialize_to_file(views, &info, file.temp_path()).map_err(
        |e| match e {
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
    file.commit().map_err(fs_err)?;
    Ok(())
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
