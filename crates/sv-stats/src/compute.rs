//! The dataset pass: every record (or a seeded sample) of a shard dataset through
//! the accumulators, in parallel, deterministically.
//!
//! The records to visit are split into one contiguous range per worker (sequential
//! reads through the memory map); each worker fills its own [`Accumulator`] and the
//! partial results are merged in worker order. The sums are integers, so the result
//! is identical whatever the worker count. Memory is one accumulator (about 10 bytes
//! per image byte: 2 MiB for 256x256) and one decode buffer per worker, plus the
//! sampled index list (8 bytes per sampled record) when `--sample` is used.
//!
//! Damage: [`sv_shard::Dataset::open`] has already checked lengths, headers, index
//! checksums and labels. With `verify` set (the CLI's default), each record's CRC-32
//! is checked before its pixels are used, so a flipped byte in a raw shard is an
//! error naming the shard and record rather than a silently wrong mean. JPEG records
//! that fail to decode are errors either way.

use std::sync::atomic::{AtomicBool, Ordering};

use sv_shard::Dataset;

use crate::StatsError;
use crate::accum::Accumulator;
use crate::npy::MeanImage;
use crate::stats::{PcaStats, SampleInfo, Source};

/// `stream` argument of [`sv_core::stream_rng`] for the sample draw.
pub const SAMPLE_STREAM: u64 = 0x5043_4153; // "PCAS"

/// Images a worker processes between progress reports.
const PROGRESS_EVERY: u64 = 32;

/// Settings of one statistics pass.
#[derive(Clone, Debug)]
pub struct ComputeConfig {
    /// Worker threads (at least 1; more than the records visited are not started).
    pub workers: usize,
    /// Use a seeded subset of this many records instead of all of them.
    pub sample: Option<u64>,
    /// Seed of the subset draw.
    pub seed: u64,
    /// Check each record's CRC-32 before using it.
    pub verify: bool,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            workers: 1,
            sample: None,
            seed: 0,
            verify: true,
        }
    }
}

/// What one pass produces.
#[derive(Clone, Debug)]
pub struct Computed {
    /// The statistics (with `mean_image: None`; the caller fills it in once it has
    /// written the file).
    pub stats: PcaStats,
    /// The per-pixel mean image.
    pub mean_image: MeanImage,
    /// The exact sums everything was derived from.
    pub accumulator: Accumulator,
}

/// The records a pass visits, in increasing order: all of them, or `sample` distinct
/// ones drawn with `stream_rng(seed, SAMPLE_STREAM, 0)`.
pub fn selection(len: usize, sample: Option<u64>, seed: u64) -> Option<Vec<usize>> {
    let n = sample?;
    if n >= len as u64 {
        return None;
    }
    let mut rng = sv_core::stream_rng(seed, SAMPLE_STREAM, 0);
    let mut picked = rand::seq::index::sample(&mut rng, len, n as usize).into_vec();
    picked.sort_unstable();
    Some(picked)
}

/// Run the pass over `dataset`. `progress` is called from the workers with the
/// number of images just finished (it must be cheap and thread-safe).
pub fn compute(
    dataset: &Dataset,
    config: &ComputeConfig,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Computed, StatsError> {
    let dir = dataset.dir().to_path_buf();
    let side = dataset.geometry().side;
    let picked = selection(dataset.len(), config.sample, config.seed);
    let total = picked.as_ref().map_or(dataset.len(), Vec::len);
    if total == 0 {
        return Err(StatsError::Empty { dir });
    }
    let workers = config.workers.clamp(1, total);
    let stop = AtomicBool::new(false);
    let record_at = |k: usize| picked.as_ref().map_or(k, |p| p[k]);

    let run_worker = |range: std::ops::Range<usize>| -> Result<Accumulator, StatsError> {
        let mut acc = Accumulator::new(side)?;
        let mut scratch = Vec::new();
        let mut unreported = 0u64;
        let wrap = |source| StatsError::Dataset {
            dir: dataset.dir().to_path_buf(),
            source,
        };
        for k in range {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let record = dataset.record(record_at(k)).map_err(wrap)?;
            if config.verify {
                record.verify().map_err(wrap)?;
            }
            let pixels = record.pixels(&mut scratch).map_err(wrap)?;
            acc.add_image(pixels)?;
            unreported += 1;
            if unreported == PROGRESS_EVERY {
                progress(unreported);
                unreported = 0;
            }
        }
        if unreported > 0 {
            progress(unreported);
        }
        Ok(acc)
    };

    let bounds: Vec<usize> = (0..=workers).map(|w| w * total / workers).collect();
    let results: Vec<Result<Accumulator, StatsError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = bounds
            .windows(2)
            .map(|b| {
                let (lo, hi) = (b[0], b[1]);
                let run = &run_worker;
                let stop = &stop;
                scope.spawn(move || {
                    let r = run(lo..hi);
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(worker, h)| h.join().unwrap_or(Err(StatsError::WorkerPanic { worker })))
            .collect()
    });

    // Merge in worker order; an error is reported from the first worker that failed
    // (the others stop early once one fails).
    let mut total_acc = Accumulator::new(side)?;
    for r in results {
        total_acc.merge(&r?)?;
    }

    let manifest = dataset.manifest();
    let source = Source {
        dir: dir.display().to_string(),
        split: manifest.split,
        codec: dataset.codec().as_str().into(),
        records: dataset.len() as u64,
        shards: dataset.shard_count() as u64,
    };
    let sample = config.sample.map(|requested| SampleInfo {
        requested,
        seed: config.seed,
    });
    let totals = total_acc.totals();
    let stats = PcaStats::from_totals(&totals, source, sample, config.verify)
        .ok_or(StatsError::Empty { dir: dir.clone() })?;
    let mean_image = MeanImage::from_accumulator(&total_acc).ok_or(StatsError::Empty { dir })?;
    Ok(Computed {
        stats,
        mean_image,
        accumulator: total_acc,
    })
}
