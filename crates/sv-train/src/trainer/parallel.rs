//! Data-parallel training: a [`Trainer`] that is one rank of a job
//! ([`Trainer::distribute`]), over any [`Collective`] (NCCL in the product, sv-dist's
//! thread test double in the CPU tests).
//!
//! What differs from one process:
//! - **Start.** The ranks check that they share their settings and starting position
//!   (one all-reduce of a few integers), then rank 0's weights and velocities are
//!   broadcast and every rank's checksum compared with rank 0's.
//! - **A step** (`reduce_gradients`). After the backward pass the flat gradient buffer
//!   is averaged across ranks in buckets (views of the buffer, nothing copied), and the
//!   step's loss and miss count are summed, so the metrics describe the whole job's
//!   batch. Each rank's batch is its slice of the global batch (the sampler
//!   interleaves ranks), so the averaged gradient is the gradient of the global batch:
//!   global batch = per-rank batch x world size, and the paper's rule is applied to it.
//!   The reduction starts only when the whole backward pass is done: tch has no
//!   per-parameter gradient hooks, so it cannot overlap the last layers' buckets with
//!   the first layers' backward as DDP does.
//! - **Dropout** masks come from a generator seeded by (seed, step, rank): each rank
//!   draws its own masks (rank 0 the masks of a single-process run).
//! - **Validation** is split into contiguous slices, one per rank; the exact miss
//!   counts are added up.
//! - **Checkpoints.** Every rank checks that it holds rank 0's weights and velocities
//!   (checksums), then rank 0 alone writes, as it alone writes the metrics. The world
//!   size is recorded; a checkpoint resumes only with the same number of ranks.
//! - **A graceful stop** ([`crate::stop`]). Each rank adds its stop flag (0 or 1) to
//!   the step's loss and miss count in the same all-reduce, so the job's count of
//!   ranks asking to stop comes with every step for free. It is read one step late
//!   (after step s the count of step s-1, which the device has finished while step s
//!   was queued: no wait), and every rank reads the same count, so all of them stop
//!   after the same step and rank 0's checkpoint is the job's.
//! - **Failure.** A rank whose run fails tells the others, which stop with an error
//!   naming it; a rank that dies or hangs is named by the collective (NCCL's store
//!   heartbeats; the test double's bookkeeping).

use sv_core::mix64;
use sv_dist::DistError;
use sv_dist::collective::{self, Collective, DEFAULT_BUCKET_BYTES, ReduceOp};
use sv_shard::Dataset;
use tch::{Kind, Tensor};

use super::{Trainer, step_seed};
use crate::error::{Result, TorchContext, TrainError};
use crate::eval::{EvalCounts, EvalMode, EvalResult, evaluate_range};

/// How a data-parallel trainer reduces and checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParallelConfig {
    /// Largest all-reduce bucket of the flat gradient, in bytes (64 MiB: AlexNet's
    /// 244 MB of fp32 gradients go in four calls, 122 MB of bf16 ones in two).
    pub bucket_bytes: usize,
    /// Also check that every rank holds rank 0's weights every this many steps (0:
    /// only before each checkpoint). Each check is two checksums over the flat
    /// buffers and one small all-reduce.
    pub check_every: u64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            check_every: 0,
        }
    }
}

/// The job a trainer is a rank of.
pub(super) struct DataParallel {
    coll: Box<dyn Collective>,
    config: ParallelConfig,
    /// The job's count of ranks asking to stop, summed with the last step's loss.
    votes: Option<Tensor>,
    /// The same count of the step before, which the device has finished by now.
    previous_votes: Option<Tensor>,
}

/// FNV-1a: a fingerprint of the settings every rank must share (compared, not
/// trusted: a collision only lets two different settings pass this check).
fn fingerprint(bytes: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// The text of an error with its causes, for the other ranks.
fn chain(e: &TrainError) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

impl Trainer {
    /// Makes this trainer rank `coll.rank()` of a data-parallel job of
    /// `coll.world_size()` ranks. Every rank calls it, with a trainer built the same
    /// way (the same settings; when resuming, the same checkpoint). It checks that the
    /// ranks agree on their settings and starting position, broadcasts rank 0's
    /// weights and velocities and checks them by checksum, and refuses a checkpoint
    /// written with another world size. From then on each step averages the
    /// gradients across the ranks and only rank 0 writes files.
    ///
    /// Each rank's data source must give it its own slice of every batch (sv-pipeline's
    /// sampler does, given the rank and world size), of `batch_size` images: the
    /// global batch is `batch_size x world size`.
    pub fn distribute(&mut self, coll: Box<dyn Collective>, config: ParallelConfig) -> Result<()> {
        if self.parallel.is_some() {
            return Err(TrainError::Config(
                "this trainer is already a rank of a job".into(),
            ));
        }
        if config.bucket_bytes == 0 {
            return Err(TrainError::Config(
                "the all-reduce bucket size must be positive".into(),
            ));
        }
        if coll.device() != self.model.device() {
            return Err(TrainError::Config(format!(
                "the collective works on {:?} but the model is on {:?}",
                coll.device(),
                self.model.device()
            )));
        }
        let mut dp = DataParallel {
            coll,
            config,
            votes: None,
            previous_votes: None,
        };
        if let Some(saved) = self.pos.saved_world {
            collective::check_resume_world(saved, dp.coll.world_size())?;
        }
        let settings = serde_json::to_vec(&(&self.config, self.model.spec(), &self.classes))
            .map_err(|e| TrainError::Json {
                path: self.checkpoints.dir.clone(),
                source: e,
            })?;
        let facts = [
            (
                "the training settings (model, batch size, rates, schedule, seed, \
                 precision; start every rank with the same ones), fingerprint",
                fingerprint(&settings),
            ),
            ("parameter count", self.model.store().numel()),
            (
                "the step to start from (every rank must resume from rank 0's checkpoint: \
                 keep the output folder on storage that every node sees)",
                self.pos.step as i64,
            ),
            ("the epoch to start in", self.pos.epoch as i64),
            ("the batch to start at", self.pos.batch_in_epoch as i64),
            (
                "the learning rate, as bits",
                self.schedule.lr.to_bits() as i64,
            ),
        ];
        let (what, values): (Vec<&str>, Vec<i64>) = facts.into_iter().unzip();
        collective::agree(dp.coll.as_mut(), &what, &values)?;
        let mut state = [
            self.model.store().master().shallow_clone(),
            self.opt.velocity().shallow_clone(),
        ];
        collective::broadcast_and_verify(dp.coll.as_mut(), &mut state)?;
        self.model.store().refresh_compute()?;
        self.parallel = Some(dp);
        Ok(())
    }

    /// This process's rank (0 for a single process).
    pub fn rank(&self) -> usize {
        self.parallel.as_ref().map_or(0, |p| p.coll.rank())
    }

    /// Ranks in the job (1 for a single process).
    pub fn world_size(&self) -> usize {
        self.parallel.as_ref().map_or(1, |p| p.coll.world_size())
    }

    /// Ends the job in order after a successful [`Trainer::run`] on every rank: waits
    /// for the checkpoint being written, then for every rank (the collective's orderly
    /// shutdown). Nothing to do for a single process beyond the checkpoint.
    pub fn finish_job(&mut self) -> Result<()> {
        self.checkpoints.finish()?;
        if let Some(p) = &mut self.parallel {
            p.coll.finish()?;
        }
        Ok(())
    }

    /// Whether this process writes checkpoints and metrics (a single process, or rank
    /// 0 of a job).
    pub(super) fn writes_files(&self) -> bool {
        self.rank() == 0
    }

    /// The seed of torch's generator for this step's dropout masks: (seed, step) for
    /// rank 0 and a single process, mixed with the rank for the others.
    pub(super) fn dropout_seed(&self) -> i64 {
        match self.rank() {
            0 => step_seed(self.config.seed, self.pos.step),
            r => step_seed(self.config.seed ^ mix64(r as u64), self.pos.step),
        }
    }

    /// Tells the collective's watchdog that this rank starts its next step.
    pub(super) fn announce_step(&mut self) {
        let step = self.pos.step + 1;
        if let Some(p) = &mut self.parallel {
            p.coll.progress(step);
        }
    }

    /// Averages the gradients across the ranks (one process: nothing to do) and sums
    /// the step's loss and misses, which become the whole job's mean loss and misses,
    /// and the ranks' stop flags (kept for [`Trainer::job_stop_agreed`]).
    pub(super) fn reduce_gradients(
        &mut self,
        loss: Tensor,
        misses: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let Some(p) = &mut self.parallel else {
            return Ok((loss, misses));
        };
        let store = self.model.store();
        let elt = store.grad().kind().elt_size_in_bytes().max(1);
        let mut buckets = store.grad_buckets((p.config.bucket_bytes / elt).max(1) as i64)?;
        p.coll.all_reduce(&mut buckets, ReduceOp::Avg)?;
        let world = p.coll.world_size() as f64;
        let vote = f64::from(u8::from(self.stop.requested().is_some()));
        let stats = loss
            .f_to_kind(Kind::Float)
            .and_then(|l| {
                let vote = l.f_zeros_like()?.f_fill_(vote)?;
                Tensor::f_stack(&[l, misses.f_to_kind(Kind::Float)?, vote], 0)
            })
            .ctx(|| "step statistics".into())?;
        let mut sums = [stats];
        p.coll.all_reduce(&mut sums, ReduceOp::Sum)?;
        let [stats] = sums;
        let votes = stats.f_select(0, 2).ctx(|| "stop votes".into())?;
        p.previous_votes = p.votes.replace(votes);
        let loss = stats
            .f_select(0, 0)
            .and_then(|l| l.f_div_scalar(world))
            .ctx(|| "job loss".into())?;
        let misses = stats.f_select(0, 1).ctx(|| "job misses".into())?;
        Ok((loss, misses))
    }

    /// Whether the job stops after this step: some rank had asked to by the step
    /// before (its count, summed with that step's loss, has landed by now). Every rank
    /// calls it after every step and gets the same answer.
    pub(super) fn job_stop_agreed(&mut self) -> Result<bool> {
        let Some(p) = &mut self.parallel else {
            return Ok(self.stop.requested().is_some());
        };
        match p.previous_votes.take() {
            Some(v) => Ok(v.f_double_value(&[]).ctx(|| "stop votes".into())? > 0.0),
            None => Ok(false),
        }
    }

    /// Checks that every rank holds rank 0's weights and velocities (a no-op for one
    /// process). Every rank calls it at the same points.
    pub(super) fn check_replicas(&mut self) -> Result<()> {
        let Some(p) = &mut self.parallel else {
            return Ok(());
        };
        let state = [
            self.model.store().master().shallow_clone(),
            self.opt.velocity().shallow_clone(),
        ];
        let when = format!("after step {}", self.pos.step);
        collective::verify_identical(p.coll.as_mut(), &state, &when)?;
        Ok(())
    }

    /// [`Trainer::check_replicas`] when the configured interval says so.
    pub(super) fn check_replicas_every(&mut self) -> Result<()> {
        let every = self.parallel.as_ref().map_or(0, |p| p.config.check_every);
        if every > 0 && self.pos.step.is_multiple_of(every) {
            self.check_replicas()?;
        }
        Ok(())
    }

    /// Evaluates on `val` (its first `limit` images) as the job: each rank scores its
    /// contiguous slice and the exact miss counts are added up, so every rank gets the
    /// whole set's result. Every rank must call it. A single process evaluates all
    /// of it ([`Trainer::evaluate`]).
    pub fn evaluate_job(
        &mut self,
        val: &Dataset,
        mode: EvalMode,
        limit: Option<usize>,
    ) -> Result<EvalResult> {
        let Some(p) = &mut self.parallel else {
            return self.evaluate(val, mode, limit);
        };
        let total = limit.map_or(val.len(), |l| l.min(val.len()));
        if total == 0 {
            return Err(TrainError::EmptyValidation {
                dataset: val.dir().to_path_buf(),
            });
        }
        let slice = collective::slice_of(total, p.coll.rank(), p.coll.world_size());
        let mine = evaluate_range(
            &self.model,
            &self.dnorm,
            val,
            mode,
            self.config.batch_size,
            slice,
            &mut |_| {},
        )?;
        let sums = collective::sum_f64(
            p.coll.as_mut(),
            &[mine.images as f64, mine.wrong1 as f64, mine.wrong5 as f64],
        )?;
        let counts = EvalCounts {
            images: sums[0] as u64,
            wrong1: sums[1] as u64,
            wrong5: sums[2] as u64,
        };
        Ok(counts.result())
    }

    /// Refuses to continue a checkpoint of another world size.
    pub(super) fn check_world(&self) -> Result<()> {
        match self.pos.saved_world {
            Some(saved) => Ok(collective::check_resume_world(saved, self.world_size())?),
            None => Ok(()),
        }
    }

    /// Tells the other ranks that this one failed with `e`, unless `e` is itself news
    /// of another rank's failure.
    pub(super) fn report_failure(&mut self, e: &TrainError) {
        let Some(p) = &mut self.parallel else { return };
        let from_elsewhere = matches!(
            e,
            TrainError::Dist(
                DistError::PeerFailed { .. }
                    | DistError::StoreLost { .. }
                    | DistError::Timeout { .. }
            )
        );
        if !from_elsewhere {
            p.coll.report_failure(&chain(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_for_different_settings() {
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
        assert_ne!(fingerprint(b""), fingerprint(b"\0"));
    }
}
