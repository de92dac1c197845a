//! The input pipeline: a deterministic stream of augmented batches from a shard
//! dataset, produced by worker threads on a tokio runtime the loader owns.
//!
//! # API in one screen
//!
//! - [`LoaderConfig`]: batch size, workers, seed, rank/world size, drop-last or pad,
//!   the resume [`Position`], the [`Augment`] mode (random train crops with flip and
//!   PCA lighting, centre crop, ten-crop) and the [`Output`] form.
//! - [`Loader::new`]`(Arc<Dataset>, LoaderConfig)` starts the stages. A `Loader` is a
//!   blocking [`Iterator`] of `Result<Batch, Error>` (for a plain thread, e.g. the
//!   trainer's) and an async [`futures_core::Stream`] of the same items (or call
//!   [`Loader::next_batch`]`.await`). Batches come in order. Dropping the loader stops
//!   every task and joins every thread.
//! - [`Batch`] owns its buffers and is `Send`; dropping it returns the buffers to the
//!   loader's pool. It holds `images() = len() * views()` crops:
//!   - [`Output::U8`]: [`Batch::pixels_u8`], uint8 crops in the stated [`Layout`]
//!     (NHWC or NCHW), plus per image [`Batch::lighting`] (the RGB lighting offset in
//!     grey levels, 0-255 scale) and [`Batch::windows`] (crop origin and flip flag),
//!     for normalising on the device as `(pixel + lighting[c] - mean[c]) / std[c]`;
//!   - [`Output::F32`]: [`Batch::pixels_f32`], float32 NCHW with lighting and
//!     normalisation already applied on the CPU (same formula).
//!   - [`Batch::labels`], [`Batch::indices`] (dataset record per sample),
//!     [`Batch::position`] and [`Batch::next_position`] (save it to resume).
//! - [`Loader::stats`]: counters and time per stage (verify, decode, augment).
//!
//! ```no_run
//! use std::sync::Arc;
//! use sv_pipeline::{Augment, Loader, LoaderConfig, Output, Layout};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dataset = Arc::new(sv_shard::Dataset::open("shards/train")?);
//! let config = LoaderConfig {
//!     batch_size: 128,
//!     seed: 42,
//!     epochs: Some(1),
//!     augment: Augment::train(227),           // random crop, flip, paper lighting
//!     output: Output::U8(Layout::Nchw),
//!     ..LoaderConfig::default()               // workers = cores, shuffle, drop last
//! };
//! for batch in Loader::new(dataset, config)? {
//!     let batch = batch?;                     // an error names shard and record
//!     let [n, c, h, w] = batch.shape();
//!     let pixels: &[u8] = batch.pixels_u8().unwrap_or_default();
//!     println!("{:?} {n}x{c}x{h}x{w} {} bytes, labels {:?}", batch.position(),
//!              pixels.len(), &batch.labels()[..4]);
//!     // keep batch.next_position() in a checkpoint; LoaderConfig::start resumes there
//! }                                           // dropping `batch` recycles its buffers
//! # Ok(()) }
//! ```
//!
//! # Determinism
//!
//! The epoch's order comes from [`sv_core::stream_rng`]`(seed, _, epoch)` and every
//! sample's crop, flip and lighting draws from [`sv_core::sample_rng`]`(seed, epoch,
//! record index)` ([`sv_augment::TrainAugment::draw`]), so the batches are
//! bit-identical whatever the worker count or timing, and a run resumed from a
//! [`Position`] continues exactly.
//!
//! # Stages and memory
//!
//! A dispatcher task walks the [`Sampler`] and hands each batch, with a buffer taken
//! from a pool, to `workers` blocking workers (`spawn_blocking` threads that read,
//! verify, decode and augment the whole batch); the consumer puts finished batches
//! back in order. All queues are bounded and the pool holds at most `workers +
//! prefetch + hold` batch buffers, so memory is O(workers x batch) whatever the
//! dataset size (plus the epoch permutation, 4 bytes per record). Raw records are
//! cropped straight from the memory map; JPEG records are decoded into a per-worker
//! scratch buffer first.
//!
//! The memory map is the one part of the resident set that grows with the data read:
//! pages of the shards stay mapped once touched (page cache, shared and reclaimable,
//! but counted in RSS). [`LoaderConfig::release_pages`] unmaps each record's pages
//! after use, which keeps peak RSS independent of the dataset size at the cost of
//! page faults when records are read again.
//!
//! # Failures
//!
//! A damaged record (checksum with `verify`, undecodable JPEG) gives the consumer
//! [`Error::Record`] naming the shard and record, or with [`OnError::Skip`] is left out
//! of its batch and counted ([`Batch::skipped`], [`Stats::skipped`]). A worker panic
//! becomes [`Error::WorkerPanic`]; if the stages die the consumer gets
//! [`Error::Stopped`], never a hang. After an error the stream ends.
#![warn(missing_docs)]

mod batch;
mod loader;
mod sampler;

pub use batch::Batch;
pub use loader::{Loader, Stats};
pub use sampler::{Position, Sampler, SamplerConfig};
pub use sv_augment::{Lighting, LightingConvention, Mean, Normalize, Window};

use sv_shard::ShardError;

/// Most worker threads a loader starts ([`LoaderConfig::workers`]). Each worker is a
/// thread and a batch buffer; 1,024 is several times the cores of the largest
/// machines, and a count beyond it is a mistake (`workers = u64::MAX` used to end in
/// a "capacity overflow" panic, `1e8` in 17 GB of thread stacks).
pub const MAX_WORKERS: usize = 1024;

/// Most batches [`LoaderConfig::prefetch`] and [`LoaderConfig::hold`] may each ask
/// for: each is one more batch buffer in the pool.
pub const MAX_PREFETCH: usize = 256;

/// Largest [`LoaderConfig::batch_size`]: 65,536 samples (one such batch of 227x227
/// uint8 crops is 10 GB).
pub const MAX_BATCH_SIZE: usize = 1 << 16;

/// What the pipeline failed at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work (batch size 0, rank past the world size, ...).
    #[error("invalid loader setting: {0}")]
    Config(String),
    /// A record could not be read (checksum mismatch, undecodable payload).
    #[error("shard {shard}, record {record} (dataset index {index}) is unreadable")]
    Record {
        /// Shard file name.
        shard: String,
        /// Index of the record in its shard.
        record: usize,
        /// Index of the record in the dataset.
        index: usize,
        /// The reader's error.
        #[source]
        source: ShardError,
    },
    /// The dataset refused an index (should not happen: indices come from the
    /// sampler over the same dataset).
    #[error("dataset read failed")]
    Shard(#[source] ShardError),
    /// An augmentation setting does not fit the dataset (crop larger than the image,
    /// mean image of the wrong size).
    #[error("augmentation failed")]
    Augment(#[from] sv_augment::AugmentError),
    /// A worker panicked while filling a batch.
    #[error("a pipeline worker panicked: {message}")]
    WorkerPanic {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The pipeline's tasks ended before the stream did.
    #[error("the pipeline stopped before the stream ended (its tasks exited)")]
    Stopped,
    /// The consumer keeps every batch buffer alive, so no new batch can be made.
    #[error(
        "the consumer holds all {held} batch buffers; drop batches sooner or raise LoaderConfig::hold"
    )]
    AllBuffersHeld {
        /// Batches alive in the consumer.
        held: usize,
    },
    /// The tokio runtime could not start.
    #[error("could not start the pipeline runtime")]
    Runtime(#[source] std::io::Error),
}

/// Memory order of a uint8 batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Layout {
    /// `[images, height, width, 3]`: each crop row is one `memcpy` from the record.
    #[default]
    Nhwc,
    /// `[images, 3, height, width]`: planar, what convolutions take.
    Nchw,
}

/// The form batches take.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// uint8 crops plus per-image lighting offsets and windows, for normalising on
    /// the device.
    U8(Layout),
    /// float32 NCHW, `(pixel + lighting - mean) / std`, computed on the CPU.
    F32(Normalize),
}

impl Default for Output {
    fn default() -> Self {
        Output::U8(Layout::Nhwc)
    }
}

/// What happens to each sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Augment {
    /// Random `crop` window, horizontal flip with p = 0.5 when `flip`, and PCA
    /// lighting when `lighting` is set.
    Train {
        /// Crop side (227 in the paper).
        crop: u32,
        /// Mirror with probability 0.5.
        flip: bool,
        /// PCA lighting settings, or none.
        lighting: Option<Lighting>,
    },
    /// The centre `crop` window only (evaluation).
    Center {
        /// Crop side.
        crop: u32,
    },
    /// The paper's ten views per sample: four corners and centre, and their mirrors
    /// (`views() == 10`, images sample-major).
    TenCrop {
        /// Crop side.
        crop: u32,
    },
}

impl Augment {
    /// The paper's training augmentation: random `crop`, flip, PCA lighting with
    /// fb.resnet.torch's constants (paper convention, std 0.1).
    pub fn train(crop: u32) -> Augment {
        Augment::Train {
            crop,
            flip: true,
            lighting: Some(Lighting::fb_resnet()),
        }
    }

    /// Crop side.
    pub fn crop(&self) -> u32 {
        match *self {
            Augment::Train { crop, .. } | Augment::Center { crop } | Augment::TenCrop { crop } => {
                crop
            }
        }
    }

    /// Crops per sample.
    pub fn views(&self) -> usize {
        match self {
            Augment::TenCrop { .. } => 10,
            _ => 1,
        }
    }
}

impl Default for Augment {
    fn default() -> Self {
        Augment::train(sv_augment::DEFAULT_CROP)
    }
}

/// What to do with a record that cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnError {
    /// Stop: the consumer gets [`Error::Record`].
    #[default]
    Fail,
    /// Leave the sample out of its batch (which is then shorter) and count it.
    Skip,
}

/// Loader settings. `Default` gives: batch 128, workers = cores, prefetch 2, hold 2,
/// seed 0, shuffled, rank 0 of 1, drop last, from epoch 0 batch 0, endless, the
/// paper's train augmentation at 227, uint8 NHWC, no verification, fail on error.
///
/// [`Loader::new`] refuses (with [`Error::Config`]) counts above [`MAX_WORKERS`],
/// [`MAX_PREFETCH`] and [`MAX_BATCH_SIZE`], and a batch whose buffer size does not fit
/// in memory's address range.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Worker threads doing the CPU work.
    pub workers: usize,
    /// Finished batches that may wait for the consumer beyond one per worker.
    pub prefetch: usize,
    /// Batches the consumer may keep alive while asking for the next one.
    pub hold: usize,
    /// Seed of the permutation and every sample's random choices.
    pub seed: u64,
    /// Shuffle each epoch (train) or keep dataset order (evaluation).
    pub shuffle: bool,
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks sharing the dataset.
    pub world_size: usize,
    /// Drop the last partial batch (true) or pad it by wrapping around (false).
    pub drop_last: bool,
    /// Where the stream starts (resume point).
    pub start: Position,
    /// Epochs to run from `start.epoch` (the stream ends after them), or endless.
    pub epochs: Option<u64>,
    /// Per-sample augmentation.
    pub augment: Augment,
    /// Batch form.
    pub output: Output,
    /// Check every record's CRC-32 before using it.
    pub verify: bool,
    /// Stop or skip on a damaged record.
    pub on_error: OnError,
    /// Unmap each record's pages once its crops are made
    /// ([`sv_shard::Record::release_pages`]), so the memory-mapped shards read so far
    /// stop counting in the process's resident set and peak RSS stays independent
    /// of the dataset size. The page cache keeps the data; the next epoch maps it back
    /// in (minor page faults). Off: resident file pages grow with the part of the
    /// dataset read (they are the kernel's page cache, shared and reclaimable, but
    /// they show in RSS and count against a container's memory limit).
    pub release_pages: bool,
}

impl LoaderConfig {
    /// The batch composition settings, for a [`Sampler`] over the same records.
    pub fn sampler(&self) -> SamplerConfig {
        SamplerConfig {
            batch_size: self.batch_size,
            rank: self.rank,
            world_size: self.world_size,
            shuffle: self.shuffle,
            drop_last: self.drop_last,
            seed: self.seed,
        }
    }
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 128,
            // every core, within the limit `Loader::new` enforces
            workers: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_WORKERS),
            prefetch: 2,
            hold: 2,
            seed: 0,
            shuffle: true,
            rank: 0,
            world_size: 1,
            drop_last: true,
            start: Position::default(),
            epochs: None,
            augment: Augment::default(),
            output: Output::default(),
            verify: false,
            on_error: OnError::Fail,
            release_pages: false,
        }
    }
}
