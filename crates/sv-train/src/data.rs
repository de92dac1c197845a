//! Training data sources for [`crate::trainer::Trainer`].
//!
//! [`PipelineSource`] is the production path: sv-pipeline's multi-threaded loader
//! (keyed crops, flips applied on the CPU, PCA lighting offsets per image) restarted
//! at (epoch, batch) for each epoch; its uint8 NHWC batches are staged for the device,
//! where the lighting offsets and normalisation are applied.
//!
//! [`ShardSource`] is a single-threaded reference: it reads a shard set directly on the
//! prefetch thread: a seeded permutation per epoch, and for every sample a random crop,
//! a reflection flag and PCA lighting offsets drawn from the keyed generator
//! `sample_rng(seed, epoch, index)`, so a batch depends only on (seed, epoch, batch
//! index) and a run resumes exactly from any position. Flips and lighting travel as
//! flags and offsets and are applied on the device. It checks every record's CRC-32
//! as it reads it unless told not to ([`ShardSource::verify`]).
//!
//! [`DataSettings`] is what a checkpoint keeps of the data a run trained on, so a
//! resumed run continues with the same augmentation and evaluation sees images of the
//! size the model was trained on.

use std::sync::Arc;

use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use sv_core::{sample_rng, stream_rng};
use sv_shard::Dataset;

use sv_pipeline::{Lighting, Loader, LoaderConfig, Output, Position, Sampler};

use crate::error::{Result, TrainError};
use crate::prefetch::{HostBatch, HostMemory, StagedBatch};

/// The source of training batches.
pub trait TrainData {
    /// Batches in one epoch (equal for every epoch).
    fn batches_per_epoch(&self) -> u64;
    /// An iterator over the batches of `epoch`, starting at batch `start`, staged in
    /// `memory`. It runs on the prefetch thread.
    fn epoch(
        &mut self,
        epoch: u64,
        start: u64,
        memory: HostMemory,
    ) -> Result<Box<dyn Iterator<Item = Result<StagedBatch>> + Send>>;
}

/// How training crops are made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Crop side (the model's input side).
    pub crop: usize,
    /// Random reflections.
    pub mirror: bool,
    /// PCA lighting, when statistics are known (the pipeline's own type, so both
    /// sources draw the same offsets; `sv_stats::PcaStats::lighting` makes it from a
    /// statistics file for a convention).
    pub lighting: Option<Lighting>,
}

/// What batches were made of, beyond the trainer's own settings: kept in a
/// checkpoint's configuration ([`crate::trainer::TrainConfig::data`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSettings {
    /// Side of the stored square images the crops were taken from (the training
    /// shards' side): evaluation must see images of this side.
    pub side: u32,
    /// Random reflections.
    pub mirror: bool,
    /// PCA lighting (None: off).
    pub lighting: Option<Lighting>,
    /// The loader that made the batches (`pipeline` or `simple`: their sample orders
    /// differ).
    pub loader: String,
    /// The training set's manifest checksum (the same dataset gives the same one,
    /// wherever it lies).
    pub dataset: Option<String>,
}

/// A [`TrainData`] reading one shard set directly.
pub struct ShardSource {
    data: Arc<Dataset>,
    batch_size: usize,
    seed: u64,
    aug: AugmentConfig,
    verify: bool,
}

impl std::fmt::Debug for ShardSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSource")
            .field("dir", &self.data.dir())
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl ShardSource {
    /// Batches of `batch_size` crops from `data`; the last partial batch of an epoch is
    /// dropped so every step sees a full batch.
    pub fn new(
        data: Arc<Dataset>,
        batch_size: usize,
        seed: u64,
        aug: AugmentConfig,
    ) -> Result<ShardSource> {
        let side = data.geometry().side as usize;
        if aug.crop == 0 || aug.crop > side {
            return Err(TrainError::Config(format!(
                "{}: images are {side}x{side}, crops of {} do not fit",
                data.dir().display(),
                aug.crop
            )));
        }
        if batch_size == 0 {
            return Err(TrainError::Config("batch size must be positive".into()));
        }
        Ok(ShardSource {
            data,
            batch_size,
            seed,
            aug,
            verify: true,
        })
    }

    /// Whether each record's CRC-32 is checked as it is read (default: yes): a
    /// damaged record is then an error naming its shard and record instead of
    /// pixels trained on.
    pub fn verify(mut self, on: bool) -> ShardSource {
        self.verify = on;
        self
    }
}

/// The sample order of `epoch`: a full seeded shuffle of `0..len`.
pub fn epoch_order(seed: u64, epoch: u64, len: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..len as u32).collect();
    order.shuffle(&mut stream_rng(seed, 0x7EA1, epoch));
    order
}

struct EpochIter {
    data: Arc<Dataset>,
    order: Vec<u32>,
    next_batch: u64,
    batches: u64,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    aug: AugmentConfig,
    verify: bool,
    memory: HostMemory,
    image: Vec<u8>,
    pixels: Vec<u8>,
    labels: Vec<i64>,
    flips: Vec<bool>,
    light: Vec<f32>,
    windows: Vec<[i64; 3]>,
}

impl EpochIter {
    fn make(&mut self) -> Result<StagedBatch> {
        let side = self.data.geometry().side as usize;
        let crop = self.aug.crop;
        let row = crop * 3;
        let start = self.next_batch as usize * self.batch_size;
        self.labels.clear();
        self.flips.clear();
        self.light.clear();
        self.windows.clear();
        let shard_err = |source| TrainError::Shard {
            dataset: self.data.dir().to_path_buf(),
            source,
        };
        for slot in 0..self.batch_size {
            let index = self.order[start + slot] as usize;
            let rec = self.data.record(index).map_err(shard_err)?;
            if self.verify {
                rec.verify().map_err(shard_err)?;
            }
            let pixels = rec.pixels(&mut self.image).map_err(shard_err)?;
            let mut rng = sample_rng(self.seed, self.epoch, index as u64);
            let y = rng.random_range(0..=side - crop);
            let x = rng.random_range(0..=side - crop);
            let flip = self.aug.mirror && rng.random_bool(0.5);
            let out = &mut self.pixels[slot * crop * row..(slot + 1) * crop * row];
            for r in 0..crop {
                let src = ((y + r) * side + x) * 3;
                out[r * row..(r + 1) * row].copy_from_slice(&pixels[src..src + row]);
            }
            self.labels.push(i64::from(rec.label));
            self.flips.push(flip);
            self.windows.push([x as i64, y as i64, i64::from(flip)]);
            if let Some(l) = self.aug.lighting {
                let mut draw = || StandardNormal.sample(&mut rng);
                let alpha_unit: [f32; 3] = [draw(), draw(), draw()];
                self.light.extend_from_slice(&l.offset(alpha_unit));
            }
        }
        HostBatch {
            images: &self.pixels,
            side: crop,
            labels: &self.labels,
            flips: Some(&self.flips),
            lighting: self.aug.lighting.map(|_| self.light.as_slice()),
            windows: Some(&self.windows),
            epoch: self.epoch,
            index: self.next_batch,
        }
        .stage(self.memory)
    }
}

impl Iterator for EpochIter {
    type Item = Result<StagedBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next_batch >= self.batches {
            return None;
        }
        let b = self.make();
        self.next_batch += 1;
        Some(b)
    }
}

impl TrainData for ShardSource {
    fn batches_per_epoch(&self) -> u64 {
        (self.data.len() / self.batch_size) as u64
    }

    fn epoch(
        &mut self,
        epoch: u64,
        start: u64,
        memory: HostMemory,
    ) -> Result<Box<dyn Iterator<Item = Result<StagedBatch>> + Send>> {
        let crop = self.aug.crop;
        Ok(Box::new(EpochIter {
            data: self.data.clone(),
            order: epoch_order(self.seed, epoch, self.data.len()),
            next_batch: start,
            batches: self.batches_per_epoch(),
            batch_size: self.batch_size,
            seed: self.seed,
            epoch,
            aug: self.aug,
            verify: self.verify,
            memory,
            image: Vec::new(),
            pixels: vec![0; self.batch_size * crop * crop * 3],
            labels: Vec::with_capacity(self.batch_size),
            flips: Vec::with_capacity(self.batch_size),
            light: Vec::with_capacity(self.batch_size * 3),
            windows: Vec::with_capacity(self.batch_size),
        }))
    }
}

/// A [`TrainData`] over sv-pipeline's [`Loader`].
pub struct PipelineSource {
    data: Arc<Dataset>,
    config: LoaderConfig,
    batches: u64,
    lighting: bool,
}

impl std::fmt::Debug for PipelineSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineSource")
            .field("dir", &self.data.dir())
            .field("config", &self.config)
            .finish()
    }
}

impl PipelineSource {
    /// A source with `config` (its `start`, `epochs` and `output` are set per epoch:
    /// uint8 NHWC). `config.augment` should be [`sv_pipeline::Augment::Train`].
    pub fn new(data: Arc<Dataset>, config: LoaderConfig) -> Result<PipelineSource> {
        let sampler = Sampler::new(data.len(), config.sampler())
            .map_err(|e| TrainError::Config(format!("{}: {e}", data.dir().display())))?;
        let lighting = matches!(
            config.augment,
            sv_pipeline::Augment::Train {
                lighting: Some(_),
                ..
            }
        );
        Ok(PipelineSource {
            batches: sampler.batches_per_epoch() as u64,
            data,
            config,
            lighting,
        })
    }
}

impl TrainData for PipelineSource {
    fn batches_per_epoch(&self) -> u64 {
        self.batches
    }

    fn epoch(
        &mut self,
        epoch: u64,
        start: u64,
        memory: HostMemory,
    ) -> Result<Box<dyn Iterator<Item = Result<StagedBatch>> + Send>> {
        let config = LoaderConfig {
            start: Position {
                epoch,
                batch: start,
            },
            epochs: Some(1),
            output: Output::U8(sv_pipeline::Layout::Nhwc),
            ..self.config.clone()
        };
        let loader = Loader::new(self.data.clone(), config).map_err(TrainError::Pipeline)?;
        let lighting = self.lighting;
        let mut labels: Vec<i64> = Vec::new();
        let mut windows: Vec<[i64; 3]> = Vec::new();
        Ok(Box::new(loader.map(move |batch| {
            let batch = batch.map_err(TrainError::Pipeline)?;
            let [_, h, _, _] = batch.shape();
            let pos = batch.position();
            let pixels = batch.pixels_u8().ok_or_else(|| TrainError::Batch {
                epoch: pos.epoch,
                index: pos.batch,
                what: "the loader gave float pixels, expected uint8".into(),
            })?;
            labels.clear();
            labels.extend(batch.labels().iter().map(|&l| i64::from(l)));
            let offsets = lighting.then(|| batch.lighting().as_flattened());
            windows.clear();
            windows.extend(
                batch
                    .windows()
                    .iter()
                    .map(|w| [i64::from(w.x), i64::from(w.y), i64::from(w.flip)]),
            );
            // Flips are already applied by the loader's crop (Window::flip).
            HostBatch {
                images: pixels,
                side: h,
                labels: &labels,
                flips: None,
                lighting: offsets,
                windows: Some(&windows),
                epoch: pos.epoch,
                index: pos.batch,
            }
            .stage(memory)
        })))
    }
}
