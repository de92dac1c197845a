//! Which records go into which batch: a full seeded permutation per epoch, split
//! across ranks so every rank gets the same number of full batches.
//!
//! The epoch's order is `order = permutation(seed, epoch)` (or `0..len` unshuffled).
//! Global slot `p` holds `order[p % len]`; rank `r`'s `j`-th sample is slot
//! `j * world_size + r`, and its batch `b` holds its samples `b * batch .. (b + 1) *
//! batch`. With `drop_last` every rank gets `floor(len / (world_size * batch))`
//! batches and no record repeats; otherwise `ceil(...)` batches, the last slots
//! wrapping around to the start of the order (padding with repeats), so no batch is
//! short on any rank.

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The `stream` key of [`sv_core::stream_rng`] for epoch permutations.
const STREAM_EPOCH_ORDER: u64 = 0x004F_5244_4552; // "ORDER"

/// A point in the batch stream: the next batch to produce is batch `batch` of epoch
/// `epoch` (on this rank). Save [`crate::Batch::next_position`] in a checkpoint and
/// pass it as [`crate::LoaderConfig::start`] to resume exactly.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// Epoch number (keys the permutation and every sample's random choices).
    pub epoch: u64,
    /// Batch number within the epoch on this rank.
    pub batch: u64,
}

/// How the records of one epoch are split into batches on one rank: the part of
/// [`crate::LoaderConfig`] the [`Sampler`] needs ([`crate::LoaderConfig::sampler`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks sharing the dataset.
    pub world_size: usize,
    /// Shuffle each epoch, or keep dataset order.
    pub shuffle: bool,
    /// Drop the last partial batch (true) or pad it by wrapping around (false).
    pub drop_last: bool,
    /// Seed of the permutation.
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// Batch 128, rank 0 of 1, shuffled, drop last, seed 0 (as [`crate::LoaderConfig`]).
    fn default() -> Self {
        SamplerConfig {
            batch_size: 128,
            rank: 0,
            world_size: 1,
            shuffle: true,
            drop_last: true,
            seed: 0,
        }
    }
}

/// Batch composition for one rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    len: usize,
    config: SamplerConfig,
}

impl Sampler {
    /// A sampler over `len` records. Fails when a setting is out of range or when
    /// `drop_last` leaves no full batch.
    pub fn new(len: usize, config: SamplerConfig) -> Result<Sampler, Error> {
        let SamplerConfig {
            batch_size,
            rank,
            world_size,
            ..
        } = config;
        if len == 0 {
            return Err(Error::Config("the dataset is empty".into()));
        }
        if len > u32::MAX as usize {
            return Err(Error::Config(format!(
                "{len} records is more than the sampler's 2^32 limit"
            )));
        }
        if batch_size == 0 || world_size == 0 {
            return Err(Error::Config(
                "batch size and world size must be positive".into(),
            ));
        }
        if batch_size > crate::MAX_BATCH_SIZE {
            return Err(Error::Config(format!(
                "batch size {batch_size} is more than the limit of {}",
                crate::MAX_BATCH_SIZE
            )));
        }
        if rank >= world_size {
            return Err(Error::Config(format!(
                "rank {rank} is not below the world size {world_size}"
            )));
        }
        // One step takes `world_size * batch_size` slots; the slot arithmetic of
        // [`Sampler::batch_indices`] goes up to `len` plus one step.
        if world_size
            .checked_mul(batch_size)
            .and_then(|step| step.checked_add(len))
            .is_none()
        {
            return Err(Error::Config(format!(
                "world size {world_size} times batch size {batch_size} is too large"
            )));
        }
        let s = Sampler { len, config };
        if s.batches_per_epoch() == 0 {
            return Err(Error::Config(format!(
                "{len} records make no full batch of {batch_size} on each of {world_size} \
                 ranks; use a smaller batch or pad instead of dropping the last batch"
            )));
        }
        Ok(s)
    }

    /// The settings it was made with.
    pub fn config(&self) -> SamplerConfig {
        self.config
    }

    /// Records in the dataset.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: [`Sampler::new`] refuses empty datasets.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    /// Batches per epoch on every rank (the same on all ranks).
    pub fn batches_per_epoch(&self) -> usize {
        let per_step = self.config.world_size * self.config.batch_size;
        if self.config.drop_last {
            self.len / per_step
        } else {
            self.len.div_ceil(per_step)
        }
    }

    /// Write the epoch's record order into `order` (reusing its allocation): a
    /// permutation of `0..len` drawn from `stream_rng(seed, _, epoch)`, or the
    /// identity when not shuffling.
    pub fn epoch_order(&self, epoch: u64, order: &mut Vec<u32>) {
        order.clear();
        order.extend(0..self.len as u32);
        if self.config.shuffle {
            let mut rng = sv_core::stream_rng(self.config.seed, STREAM_EPOCH_ORDER, epoch);
            order.shuffle(&mut rng);
        }
    }

    /// Write the dataset indices of this rank's batch `batch` into `out`, given the
    /// epoch's `order` from [`Sampler::epoch_order`].
    pub fn batch_indices(&self, order: &[u32], batch: usize, out: &mut Vec<u64>) {
        out.clear();
        let n = order.len().max(1);
        let SamplerConfig {
            batch_size,
            rank,
            world_size,
            ..
        } = self.config;
        let first = batch * batch_size;
        out.extend((first..first + batch_size).map(|j| {
            let slot = j * world_size + rank;
            u64::from(order[slot % n])
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(s: &Sampler, e: u64) -> Vec<Vec<u64>> {
        let mut order = Vec::new();
        s.epoch_order(e, &mut order);
        (0..s.batches_per_epoch())
            .map(|b| {
                let mut v = Vec::new();
                s.batch_indices(&order, b, &mut v);
                v
            })
            .collect()
    }

    fn batches_of(batch_size: usize) -> SamplerConfig {
        SamplerConfig {
            batch_size,
            ..SamplerConfig::default()
        }
    }

    #[test]
    fn one_rank_is_a_permutation_and_reshuffles_per_epoch() {
        let config = SamplerConfig {
            seed: 7,
            ..batches_of(10)
        };
        let s = Sampler::new(100, config).unwrap();
        let e0: Vec<u64> = epoch(&s, 0).concat();
        let mut sorted = e0.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(e0, (0..100).collect::<Vec<_>>(), "shuffled");
        let e1: Vec<u64> = epoch(&s, 1).concat();
        assert_ne!(e0, e1);
        assert_eq!(e0, epoch(&s, 0).concat(), "same seed, same order");
        let other = Sampler::new(100, SamplerConfig { seed: 8, ..config }).unwrap();
        assert_ne!(e0, epoch(&other, 0).concat());
    }

    #[test]
    fn ranks_get_equal_counts_and_disjoint_records_when_dropping() {
        let (len, batch, world) = (103, 4, 3);
        let mut all = Vec::new();
        for rank in 0..world {
            let config = SamplerConfig {
                rank,
                world_size: world,
                seed: 1,
                ..batches_of(batch)
            };
            let s = Sampler::new(len, config).unwrap();
            assert_eq!(s.batches_per_epoch(), 8); // floor(103 / 12)
            let e = epoch(&s, 2);
            assert_eq!(e.len(), 8);
            assert!(e.iter().all(|b| b.len() == batch));
            all.extend(e.concat());
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "no record on two ranks");
        assert_eq!(n, 96);
    }

    #[test]
    fn padding_covers_every_record_with_equal_counts() {
        let (len, batch, world) = (103, 4, 3);
        let mut all = Vec::new();
        for rank in 0..world {
            let config = SamplerConfig {
                rank,
                world_size: world,
                drop_last: false,
                seed: 1,
                ..batches_of(batch)
            };
            let s = Sampler::new(len, config).unwrap();
            assert_eq!(s.batches_per_epoch(), 9); // ceil(103 / 12)
            let e = epoch(&s, 0);
            assert!(e.iter().all(|b| b.len() == batch));
            all.extend(e.concat());
        }
        assert_eq!(all.len(), 108);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 103, "every record appears");
    }

    #[test]
    fn unshuffled_is_dataset_order() {
        let config = SamplerConfig {
            shuffle: false,
            drop_last: false,
            ..batches_of(3)
        };
        let s = Sampler::new(10, config).unwrap();
        assert_eq!(s.config(), config);
        assert_eq!(
            epoch(&s, 5),
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9, 0, 1]]
        );
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(Sampler::new(0, batches_of(1)).is_err());
        assert!(Sampler::new(10, batches_of(0)).is_err());
        let rank_2_of_2 = SamplerConfig {
            rank: 2,
            world_size: 2,
            ..batches_of(1)
        };
        assert!(Sampler::new(10, rank_2_of_2).is_err());
        assert!(Sampler::new(10, batches_of(11)).is_err());
        let padded = SamplerConfig {
            drop_last: false,
            ..batches_of(11)
        };
        assert!(Sampler::new(10, padded).is_ok());
    }

    #[test]
    fn sizes_that_would_overflow_are_errors_not_panics() {
        let err = Sampler::new(10, batches_of(usize::MAX)).unwrap_err();
        assert!(err.to_string().contains("limit of 65536"), "{err}");
        let huge_world = SamplerConfig {
            world_size: usize::MAX,
            drop_last: false,
            ..batches_of(2)
        };
        let err = Sampler::new(10, huge_world).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }
}
