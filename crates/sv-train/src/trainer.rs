//! The training loop: prefetched batches, the paper's update, a learning-rate
//! schedule driven by validation error, metrics windows, and checkpoints that let a
//! killed run continue exactly.
//!
//! [`Trainer::run`] reads as its steps: `train_epoch` (batches from the prefetch
//! thread, one [`Trainer::train_step`] each, a metrics window every `log_every` steps,
//! periodic checkpoints), `validate`, `end_epoch` (schedule, epoch record, `last` and
//! `best` checkpoints), and after the last epoch `final_evaluation`. A step is
//! `compute_gradients`, `reduce_gradients` (where data-parallel training averages
//! them), `apply_update`. After every step the loop looks at its stop flag
//! ([`crate::stop`]): a requested stop ends the run at that step, with its checkpoint.
//!
//! Shape: a [`Trainer`] holds what a step needs (model, optimiser, schedule, input
//! normalisation, the device transfer), its [`Position`] (step, epoch, batch, best
//! error, and what a checkpoint resumed from said) and its checkpoints (a small type
//! around the background [`CheckpointWriter`]). [`Trainer::new`] and
//! [`Trainer::resume`] each make the model and optimiser their way (seeded init; the
//! checkpoint's tensors) and share one assembly. The compute-only benchmark
//! ([`bench_compute`]) is a free function that drives the step from outside.
//!
//! Data parallelism ([`Trainer::distribute`], in `parallel`): each process is one rank
//! of a job and trains on its own slice of every batch; the gradients are averaged
//! across ranks after the backward pass, validation is split and its counts added up,
//! and only rank 0 writes files.
//!
//! Determinism: the weights are initialised from torch's generator seeded with the
//! run's seed, and before every step the generator is re-seeded from (seed, step) (and
//! the rank, in a data-parallel job), so the dropout masks of step s are the same
//! whether or not the run was resumed. The
//! data source is asked for (epoch, first batch), and the pipeline's keyed randomness
//! gives the same batches from there.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sv_core::{ClassInfo, mix64};
use sv_shard::Dataset;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{
    self, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointMeta, CheckpointWriter, HostCheckpoint,
};
use crate::error::{Result, TorchContext, TrainError};
use crate::eval::{EvalMode, EvalResult, evaluate};
use crate::input::{DeviceNorm, Normalization};
use crate::metrics::{MetricsRecord, MetricsSink};
use crate::model::{Model, ModelSpec};
use crate::optim::{PaperSgd, ScalerState};
use crate::prefetch::{DeviceBatch, HostMemory, Prefetcher, Transfer, transfer_for};
use crate::runlock::RunLock;
use crate::schedule::Schedule;
use crate::stop::StopFlag;
use crate::window::{ClosedWindow, Totals, Window, WindowEnd};

mod parallel;
pub use parallel::ParallelConfig;

pub use crate::config::TrainConfig;
pub use crate::data::TrainData;
pub use crate::files::{BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_FILE};

/// What the loop reports as it goes (the CLI draws it).
#[derive(Debug)]
pub enum Event<'a> {
    /// A step finished.
    Step {
        /// Global step count.
        step: u64,
        /// Epoch.
        epoch: u64,
        /// Batch index within the epoch.
        index: u64,
        /// Batches per epoch.
        of: u64,
    },
    /// A metrics record was written.
    Record(&'a MetricsRecord),
    /// Validation started (`total` images).
    EvalStart {
        /// Images to score.
        total: u64,
    },
    /// A checkpoint was written.
    Checkpoint(&'a Path),
    /// A stop was requested (a signal, see [`crate::stop`]): the run ends after this
    /// step, once `last.safetensors` is written.
    Stopping(Stopped),
}

/// A run that ended early because a stop was requested ([`crate::stop`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// The step after which the run stopped (every rank of a job the same).
    pub step: u64,
    /// The signal this process received; None on a rank of a job that stopped because
    /// another rank received one.
    pub signal: Option<i32>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// Steps taken in total.
    pub steps: u64,
    /// Epochs completed.
    pub epochs_done: u64,
    /// The last validation result, if any.
    pub last_val: Option<EvalResult>,
    /// The final evaluation (ten-crop when configured), if a validation set was given
    /// and training finished.
    pub final_eval: Option<(EvalMode, EvalResult)>,
    /// Mean images per second over the steps of this invocation.
    pub images_per_s: f64,
    /// Share of this invocation's step time spent waiting for data.
    pub data_wait_share: f64,
    /// Where the latest checkpoint is.
    pub checkpoint: PathBuf,
    /// Set when a stop request ended the run early (the checkpoint is written, and
    /// `--resume` continues from it).
    pub stopped: Option<Stopped>,
}

/// What one call of [`Trainer::run`] keeps between steps: the metrics file, the
/// window whose sums are still on their way, the totals, the last validation.
struct RunState<'e> {
    /// None on the ranks other than 0 of a data-parallel job: they write no files.
    metrics: Option<MetricsSink>,
    last: PathBuf,
    pending: Option<ClosedWindow>,
    epoch: Totals,
    total: Totals,
    last_val: Option<EvalResult>,
    on_event: &'e mut dyn FnMut(Event<'_>),
}

impl<'e> RunState<'e> {
    fn open(
        out_dir: &Path,
        writes_files: bool,
        step: u64,
        on_event: &'e mut dyn FnMut(Event<'_>),
    ) -> Result<RunState<'e>> {
        Ok(RunState {
            metrics: writes_files
                .then(|| MetricsSink::open(out_dir, step))
                .transpose()?,
            last: out_dir.join(LAST_CHECKPOINT),
            pending: None,
            epoch: Totals::default(),
            total: Totals::default(),
            last_val: None,
            on_event,
        })
    }

    fn record(&mut self, rec: &MetricsRecord) -> Result<()> {
        if let Some(m) = &mut self.metrics {
            m.write(rec)?;
        }
        (self.on_event)(Event::Record(rec));
        Ok(())
    }

    /// Logs the window closed before `closed` (its sums have long landed) and keeps
    /// `closed` for next time, or logs both now when `flush`.
    fn close_window(&mut self, closed: ClosedWindow, flush: bool) -> Result<()> {
        if let Some(previous) = self.pending.take() {
            self.finish_window(previous)?;
        }
        if flush {
            self.finish_window(closed)
        } else {
            self.pending = Some(closed);
            Ok(())
        }
    }

    fn finish_window(&mut self, w: ClosedWindow) -> Result<()> {
        let (rec, stats) = w.finish()?;
        self.record(&rec)?;
        self.epoch.add(&stats);
        Ok(())
    }
}

/// Where a run stands: the steps taken, the epoch and batch to continue at, the best
/// validation error so far, and what a checkpoint resumed from said of the epoch in
/// progress and the job that wrote it. A new run starts at the default; a resumed
/// one at [`Position::of`] its checkpoint's metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Position {
    /// Optimiser steps taken.
    pub step: u64,
    /// Epoch to continue in (0-based).
    pub epoch: u64,
    /// Next batch index within `epoch`.
    pub batch_in_epoch: u64,
    /// Best validation top-1 error so far (decides when best.safetensors is written).
    pub best_top1: Option<f64>,
    /// The sums of the epoch in progress as the checkpoint had them (taken by the
    /// first run of the loop).
    pub epoch_sums: Option<Totals>,
    /// The world size of the job that wrote the checkpoint (None: a new run).
    pub saved_world: Option<usize>,
}

impl Position {
    /// Where the run that wrote `meta` stood.
    pub fn of(meta: &CheckpointMeta) -> Position {
        Position {
            step: meta.step,
            epoch: meta.epoch,
            batch_in_epoch: meta.batch_in_epoch,
            best_top1: meta.best_top1,
            epoch_sums: meta.epoch_sums.map(Totals::from),
            saved_world: Some(meta.world_size),
        }
    }
}

/// A run's checkpoints: where they go, and the background writer that writes them in
/// order ([`CheckpointWriter`]) while training goes on.
struct Checkpoints {
    dir: PathBuf,
    writer: CheckpointWriter,
}

impl Checkpoints {
    fn last(&self) -> PathBuf {
        self.dir.join(LAST_CHECKPOINT)
    }

    fn best(&self) -> PathBuf {
        self.dir.join(BEST_CHECKPOINT)
    }

    /// Queues `ck` for `path` (after the write in flight).
    fn write(&mut self, path: &Path, ck: HostCheckpoint) -> Result<()> {
        self.writer.write(path, ck)
    }

    /// With `keep` > 0: once `last` (just queued) is on disk, also keeps it as the
    /// history checkpoint of `done` epochs and prunes older ones. Returns its path.
    fn keep_history(&mut self, done: u64, keep: usize) -> Result<Option<PathBuf>> {
        if keep == 0 {
            return Ok(None);
        }
        let (dir, last) = (self.dir.clone(), self.last());
        let kept = dir.join(checkpoint::epoch_checkpoint_name(done));
        self.writer
            .then(move || checkpoint::keep_epoch(&dir, &last, done, keep).map(drop))?;
        Ok(Some(kept))
    }

    /// Waits for the checkpoint being written; its error if it failed.
    fn finish(&mut self) -> Result<()> {
        self.writer.finish()
    }
}

/// A model with its optimiser, schedule and position: what a step needs, and the
/// run's checkpoints.
pub struct Trainer {
    config: TrainConfig,
    model: Model,
    opt: PaperSgd,
    schedule: Schedule,
    norm: Normalization,
    dnorm: DeviceNorm,
    classes: Vec<ClassInfo>,
    pos: Position,
    transfer: Box<dyn Transfer>,
    checkpoints: Checkpoints,
    /// The job this trainer is a rank of (None: a single process).
    parallel: Option<parallel::DataParallel>,
    /// What says that a stop was requested (by default: this process's signals).
    stop: StopFlag,
    /// The stop the run agreed on, once it has.
    stopping: Option<Stopped>,
}

/// What [`Trainer::new`] and [`Trainer::resume`] each make their own way; the rest of
/// a trainer is assembled from it in one place ([`Trainer::assemble`]).
struct Parts {
    config: TrainConfig,
    model: Model,
    opt: PaperSgd,
    schedule: Schedule,
    norm: Normalization,
    classes: Vec<ClassInfo>,
    pos: Position,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.config.model)
            .field("step", &self.pos.step)
            .finish()
    }
}

/// Seed of torch's generator for one step.
fn step_seed(seed: u64, step: u64) -> i64 {
    (mix64(seed ^ mix64(step.wrapping_add(0x5EED))) >> 1) as i64
}

impl Trainer {
    /// A fresh run: builds and initialises the model on `device`.
    pub fn new(
        config: TrainConfig,
        classes: Vec<ClassInfo>,
        norm: Normalization,
        device: Device,
        out_dir: &Path,
    ) -> Result<Trainer> {
        if config.batch_size == 0 || config.log_every == 0 {
            return Err(TrainError::Config(
                "batch size and log interval must be positive".into(),
            ));
        }
        let mut spec = ModelSpec::by_name(&config.model, classes.len() as i64)?;
        if let Some(init) = config.init {
            spec.init = init;
        }
        if let Some(scale) = config.input_scale {
            spec.input_scale = scale;
        }
        if let Some(p) = config.dropout {
            if !(0.0..1.0).contains(&p) {
                return Err(TrainError::Config(format!(
                    "the dropout probability must be in [0, 1), got {p}"
                )));
            }
            for layer in &mut spec.layers {
                if let crate::model::LayerSpec::Dropout { p: old } = layer {
                    *old = p;
                }
            }
        }
        tch::manual_seed(step_seed(config.seed, u64::MAX));
        let model = Model::with_precision(&spec, device, config.precision_on(device))?;
        let mut opt = PaperSgd::new(model.store(), config.sgd)?;
        if let Some(scale) = config.loss_scale {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(TrainError::Config(format!(
                    "the loss scale must be positive, got {scale}"
                )));
            }
            opt.set_scaler_state(ScalerState {
                scale,
                ..ScalerState::default()
            })?;
        }
        let schedule = Schedule::new(config.schedule.clone(), config.lr)?;
        let parts = Parts {
            config,
            model,
            opt,
            schedule,
            norm,
            classes,
            pos: Position::default(),
        };
        Trainer::assemble(parts, device, out_dir)
    }

    /// Continues from a checkpoint. The model, classes, normalisation, schedule and
    /// seed come from the checkpoint; from `config`, the run-length settings
    /// (epochs, max steps, intervals, limits) apply.
    pub fn resume(
        path: &Path,
        config: TrainConfig,
        device: Device,
        out_dir: &Path,
    ) -> Result<Trainer> {
        let ck = checkpoint::load(path)?;
        // the run's spec (model, batch, rates, schedule, seed, dropout, data) and
        // today's limits; the layers come from the checkpoint's model
        let config = TrainConfig::resumed(ck.meta.spec.clone(), &config);
        let mut model = Model::with_precision(&ck.meta.model, device, config.precision_on(device))?;
        model.load_params(&ck.params, path)?;
        let mut opt = PaperSgd::new(model.store(), config.sgd)?;
        let vel = ck.velocities_for(model.names(), path)?;
        opt.load_velocities(model.store(), vel)?;
        if let Some(state) = ck.meta.loss_scale {
            opt.set_scaler_state(state)?;
        }
        let pos = Position::of(&ck.meta);
        let parts = Parts {
            config,
            model,
            opt,
            schedule: ck.meta.schedule,
            norm: ck.meta.normalization,
            classes: ck.meta.classes,
            pos,
        };
        Trainer::assemble(parts, device, out_dir)
    }

    /// The one assembly of new and resumed trainers: the device's normalisation and
    /// transfer, the output folder.
    fn assemble(parts: Parts, device: Device, out_dir: &Path) -> Result<Trainer> {
        let Parts {
            config,
            model,
            opt,
            schedule,
            norm,
            classes,
            pos,
        } = parts;
        let dnorm = DeviceNorm::new(&norm, model.spec().input_scale, device)?
            .channels_last(config.channels_last_on(device));
        std::fs::create_dir_all(out_dir).map_err(crate::error::io_err(out_dir))?;
        let transfer = transfer_for(device, config.copy_stream.unwrap_or(true))?;
        Ok(Trainer {
            config,
            model,
            opt,
            schedule,
            norm,
            dnorm,
            classes,
            pos,
            transfer,
            checkpoints: Checkpoints {
                dir: out_dir.into(),
                writer: CheckpointWriter::new(),
            },
            parallel: None,
            stop: StopFlag::process(),
            stopping: None,
        })
    }

    /// Makes `flag` the one this trainer looks at after each step (by default the
    /// process's, set by the signals of [`crate::stop::install`]).
    pub fn stop_on(&mut self, flag: StopFlag) {
        self.stop = flag;
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Steps taken so far.
    pub fn step(&self) -> u64 {
        self.pos.step
    }

    /// Current (epoch, batch within epoch).
    pub fn position(&self) -> (u64, u64) {
        (self.pos.epoch, self.pos.batch_in_epoch)
    }

    /// The schedule's state.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The configuration in force.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    fn meta(&self) -> Result<CheckpointMeta> {
        Ok(CheckpointMeta {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            model: self.model.spec().clone(),
            classes: self.classes.clone(),
            normalization: self.norm.clone(),
            step: self.pos.step,
            epoch: self.pos.epoch,
            batch_in_epoch: self.pos.batch_in_epoch,
            schedule: self.schedule.clone(),
            seed: self.config.seed,
            spec: self.config.spec(),
            limits: self.config.limits(),
            best_top1: self.pos.best_top1,
            loss_scale: self.opt.scaler().map(|s| s.state()).transpose()?,
            world_size: self.world_size(),
            epoch_sums: None,
        })
    }

    /// Copies the full state to the host (waiting for the device) for a checkpoint.
    fn capture(&self) -> Result<HostCheckpoint> {
        HostCheckpoint::capture(self.meta()?, self.model.store(), self.opt.velocity())
    }

    /// Writes the full state atomically to `path` (after any checkpoint still being
    /// written in the background).
    pub fn save_checkpoint(&mut self, path: &Path) -> Result<()> {
        self.checkpoints.finish()?;
        self.capture()?.write(path)
    }

    /// One optimiser step on a device batch: gradients, their reduction across
    /// processes (a no-op for one), the update. Returns the step's detached mean loss
    /// and its number of top-1 misses as device tensors, over the whole job's batch
    /// (every rank's share; reading them would wait for the device; the loop reads
    /// them a window later).
    pub fn train_step(&mut self, batch: &DeviceBatch) -> Result<(Tensor, Tensor)> {
        tch::manual_seed(self.dropout_seed());
        self.announce_step();
        let (loss, misses) = self.compute_gradients(batch)?;
        let out = self.reduce_gradients(loss, misses)?;
        self.apply_update()?;
        self.pos.step += 1;
        self.check_replicas_every()?;
        Ok(out)
    }

    /// Forward, loss and backward: the gradients land in the parameters' gradients.
    fn compute_gradients(&mut self, batch: &DeviceBatch) -> Result<(Tensor, Tensor)> {
        let logits = self.model.forward(&batch.input, true)?;
        let loss = logits
            .f_cross_entropy_loss::<Tensor>(&batch.labels, None, tch::Reduction::Mean, -100, 0.0)
            .ctx(|| "loss".into())?;
        self.opt
            .scale_loss(&loss)?
            .f_backward()
            .ctx(|| format!("backward at step {}", self.pos.step))?;
        let misses = logits
            .f_detach()
            .and_then(|l| l.f_argmax(-1, false))
            .and_then(|a| a.f_ne_tensor(&batch.labels))
            .and_then(|m| m.f_sum(Kind::Float))
            .ctx(|| "train error".into())?;
        Ok((loss.f_detach().ctx(|| "loss".into())?, misses))
    }

    /// The paper's update with the schedule's current rate.
    fn apply_update(&mut self) -> Result<()> {
        self.opt.step(self.model.store(), self.schedule.lr)
    }

    fn sync(&self) {
        if let Device::Cuda(i) = self.model.device() {
            tch::Cuda::synchronize(i as i64);
        }
    }

    /// Evaluates on `val` with `mode`.
    pub fn evaluate(
        &self,
        val: &Dataset,
        mode: EvalMode,
        limit: Option<usize>,
    ) -> Result<EvalResult> {
        evaluate(
            &self.model,
            &self.dnorm,
            val,
            mode,
            self.config.batch_size,
            limit,
            &mut |_| {},
        )
    }

    fn reached_max_steps(&self) -> bool {
        self.config.max_steps.is_some_and(|m| self.pos.step >= m)
    }

    /// Trains until `config.epochs` epochs (or `max_steps` steps) are done, evaluating on
    /// `val` at each epoch end when given. In a data-parallel job a failure is also
    /// reported to the other ranks, so they stop with an error naming this one.
    pub fn run(
        &mut self,
        data: &mut dyn TrainData,
        val: Option<&Dataset>,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<TrainOutcome> {
        let outcome = self
            .check_world()
            .and_then(|()| self.run_epochs(data, val, on_event));
        if let Err(e) = &outcome {
            self.report_failure(e);
        }
        outcome
    }

    fn run_epochs(
        &mut self,
        data: &mut dyn TrainData,
        val: Option<&Dataset>,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<TrainOutcome> {
        let batches = data.batches_per_epoch();
        if batches == 0 {
            return Err(TrainError::EmptyEpoch);
        }
        let (_lock, mut run) = self.open_run(on_event)?;
        run.epoch = self.pos.epoch_sums.take().unwrap_or_default();
        while self.pos.epoch < self.config.epochs
            && !self.reached_max_steps()
            && !self.stops_between_epochs(&mut run)
        {
            let totals = self.train_epoch(data, batches, &mut run)?;
            run.total.merge(&totals);
            if self.pos.batch_in_epoch < batches {
                // --max-steps or a stop ended the run inside the epoch; the checkpoint
                // keeps its sums
                run.epoch = totals;
                let last = run.last.clone();
                self.save(&last, &mut run)?;
                break;
            }
            let result = self.validate(val, &mut run)?;
            self.end_epoch(result, &totals, &mut run)?;
        }
        let final_eval = match self.stopping {
            None => self.final_evaluation(val, &mut run)?,
            Some(_) => None,
        };
        self.checkpoints.finish()?;
        Ok(TrainOutcome {
            steps: self.pos.step,
            epochs_done: self.pos.epoch,
            last_val: run.last_val,
            final_eval,
            images_per_s: run.total.images_per_s(),
            data_wait_share: run.total.wait_share(),
            checkpoint: run.last,
            stopped: self.stopping,
        })
    }

    /// What a run writes to, opened: the run lock (taken by the process that writes
    /// the files; what dead writers left half-written goes), the metrics log without
    /// the lines a killed invocation wrote past its checkpoint, and the loop's state.
    fn open_run<'e>(
        &mut self,
        on_event: &'e mut dyn FnMut(Event<'_>),
    ) -> Result<(Option<RunLock>, RunState<'e>)> {
        let dir = self.checkpoints.dir.clone();
        let lock = self
            .writes_files()
            .then(|| RunLock::acquire(&dir))
            .transpose()?;
        for path in lock.iter().flat_map(RunLock::removed) {
            tracing::info!(
                "removed {}, left by a run that died writing it",
                path.display()
            );
        }
        if lock.is_some() {
            crate::metrics::drop_after(&dir.join(METRICS_FILE), self.pos.step, self.pos.epoch)?;
        }
        let run = RunState::open(&dir, self.writes_files(), self.pos.step, on_event)?;
        Ok((lock, run))
    }

    /// Before an epoch: whether the run stops there. One process stops on a request
    /// that came during the last epoch's end (its `last` is written) or before any
    /// step; a job's ranks decide only after a step, together (see `check_stop`).
    fn stops_between_epochs(&mut self, run: &mut RunState<'_>) -> bool {
        if self.stopping.is_none()
            && self.parallel.is_none()
            && let Some(signal) = self.stop.requested()
        {
            self.stop_now(Some(signal), run);
        }
        self.stopping.is_some()
    }

    /// Records that the run stops after the current step, and says so.
    fn stop_now(&mut self, signal: Option<i32>, run: &mut RunState<'_>) {
        let stopped = Stopped {
            step: self.pos.step,
            signal,
        };
        self.stopping = Some(stopped);
        (run.on_event)(Event::Stopping(stopped));
    }

    /// After a step: whether the run stops now. One process looks at its flag; the
    /// ranks of a job decide together (see `parallel`).
    fn check_stop(&mut self, run: &mut RunState<'_>) -> Result<()> {
        if self.stopping.is_some() {
            return Ok(());
        }
        let stop = match self.parallel {
            None => self.stop.requested().map(Some),
            Some(_) => self.job_stop_agreed()?.then(|| self.stop.requested()),
        };
        if let Some(signal) = stop {
            self.stop_now(signal, run);
        }
        Ok(())
    }

    /// The steps of one epoch from the current position: batches from the prefetch
    /// thread, a metrics window every `log_every` steps, a checkpoint every
    /// `checkpoint_every` steps. Returns the epoch's totals.
    fn train_epoch(
        &mut self,
        data: &mut dyn TrainData,
        batches: u64,
        run: &mut RunState<'_>,
    ) -> Result<Totals> {
        let memory = HostMemory::for_device(self.model.device());
        let source = data.epoch(self.pos.epoch, self.pos.batch_in_epoch, memory)?;
        let mut pf = Prefetcher::spawn(source, self.config.prefetch_depth)?;
        let mut window = Window::new();
        let mut first_window = true;
        let mut next = self.fetch(&mut pf)?;
        while let Some(batch) = next.take() {
            self.check_position(&batch)?;
            // every rank trains on a batch of the same size: the job's images
            let images = batch.labels.size()[0] as u64 * self.world_size() as u64;
            let (loss, misses) = self.train_step(&batch)?;
            self.pos.batch_in_epoch += 1;
            self.check_stop(run)?;
            let last = self.reached_max_steps()
                || self.pos.batch_in_epoch >= batches
                || self.stopping.is_some();
            if !last {
                // Batch i+1 was staged by the thread during step i. On CUDA its copy
                // runs on the copy stream beside step i's kernels; its normalisation
                // is queued behind them, waiting for the copy's event.
                next = self.fetch(&mut pf)?;
            }
            window.add(loss, misses, images);
            (run.on_event)(Event::Step {
                step: self.pos.step,
                epoch: self.pos.epoch,
                index: self.pos.batch_in_epoch - 1,
                of: batches,
            });
            // a checkpoint closes the window too: the metrics up to its step are written
            // before it, and the epoch's sums in it are complete
            let checkpoint = !last
                && self.config.checkpoint_every > 0
                && self.pos.step.is_multiple_of(self.config.checkpoint_every);
            if window.steps() == self.config.log_every || last || checkpoint {
                // The first window holds the warm-up, the last ends the epoch: waiting
                // for the device there makes every window's wall time its own.
                if first_window || last {
                    self.sync();
                }
                first_window = false;
                let closed = window.close(WindowEnd {
                    step: self.pos.step,
                    epoch: self.pos.epoch,
                    lr: self.schedule.lr,
                    waited: pf.take_waited(),
                })?;
                run.close_window(closed, last || checkpoint)?;
            }
            if checkpoint {
                let last_path = run.last.clone();
                self.save(&last_path, run)?;
            }
        }
        drop(pf);
        if self.pos.batch_in_epoch < batches && !self.reached_max_steps() && self.stopping.is_none()
        {
            return Err(TrainError::ShortEpoch {
                epoch: self.pos.epoch,
                got: self.pos.batch_in_epoch,
                want: batches,
            });
        }
        Ok(std::mem::take(&mut run.epoch))
    }

    /// The next batch from the prefetch thread, its copy to the device queued.
    fn fetch(&mut self, pf: &mut Prefetcher) -> Result<Option<DeviceBatch>> {
        match pf.next_batch() {
            Some(staged) => {
                let device = self.model.device();
                Ok(Some(staged?.upload(
                    device,
                    &self.dnorm,
                    self.transfer.as_mut(),
                )?))
            }
            None => Ok(None),
        }
    }

    fn check_position(&self, batch: &DeviceBatch) -> Result<()> {
        if batch.epoch != self.pos.epoch || batch.index != self.pos.batch_in_epoch {
            return Err(TrainError::OutOfOrder {
                want_epoch: self.pos.epoch,
                want_index: self.pos.batch_in_epoch,
                epoch: batch.epoch,
                index: batch.index,
            });
        }
        Ok(())
    }

    /// The centre-crop validation at an epoch end (at most `val_limit` images).
    fn validate(
        &mut self,
        val: Option<&Dataset>,
        run: &mut RunState<'_>,
    ) -> Result<Option<EvalResult>> {
        let Some(v) = val else { return Ok(None) };
        (run.on_event)(Event::EvalStart {
            total: self.config.val_limit.map_or(v.len(), |l| l.min(v.len())) as u64,
        });
        Ok(Some(self.evaluate_job(
            v,
            EvalMode::Centre,
            self.config.val_limit,
        )?))
    }

    /// After an epoch's validation: the schedule, the epoch's record, `last` and (on a
    /// new best validation error) `best` checkpoints.
    fn end_epoch(
        &mut self,
        val: Option<EvalResult>,
        totals: &Totals,
        run: &mut RunState<'_>,
    ) -> Result<()> {
        let ended = self.pos.epoch;
        if let Some(scaler) = self.opt.scaler() {
            // the device is idle after validation: reading the scaler costs nothing
            let st = scaler.state()?;
            tracing::info!(
                epoch = ended,
                skipped_steps = st.skipped,
                loss_scale = st.scale,
                "fp16 loss scaling: {} steps skipped so far, scale {}",
                st.skipped,
                st.scale
            );
        }
        self.schedule.end_epoch(ended, val.map(|r| r.top1_err));
        self.pos.epoch += 1;
        self.pos.batch_in_epoch = 0;
        run.record(&MetricsRecord::Epoch {
            step: self.pos.step,
            epoch: ended,
            train_loss: totals.mean_loss(),
            val_top1_err: val.map(|r| r.top1_err),
            val_top5_err: val.map(|r| r.top5_err),
            lr: self.schedule.lr,
            images_per_s: totals.images_per_s(),
            data_wait_share: totals.wait_share(),
        })?;
        let last = run.last.clone();
        self.save(&last, run)?;
        self.keep_history(run)?;
        if let Some(r) = val {
            if self.pos.best_top1.is_none_or(|b| r.top1_err < b) {
                self.pos.best_top1 = Some(r.top1_err);
                let best = self.checkpoints.best();
                self.save(&best, run)?;
            }
            run.last_val = Some(r);
        }
        Ok(())
    }

    /// With `keep_epochs`: once `last` (just queued) is on disk, the background writer
    /// also keeps it as this epoch's history checkpoint and prunes older ones.
    fn keep_history(&mut self, run: &mut RunState<'_>) -> Result<()> {
        let kept = self
            .checkpoints
            .keep_history(self.pos.epoch, self.config.keep_epochs)?;
        if let Some(kept) = kept {
            (run.on_event)(Event::Checkpoint(&kept));
        }
        Ok(())
    }

    /// After the last epoch: the validation set once more, ten-crop when configured.
    fn final_evaluation(
        &mut self,
        val: Option<&Dataset>,
        run: &mut RunState<'_>,
    ) -> Result<Option<(EvalMode, EvalResult)>> {
        let Some(v) = val.filter(|_| self.pos.epoch >= self.config.epochs) else {
            return Ok(None);
        };
        let mode = if self.config.final_ten_crop {
            EvalMode::TenCrop
        } else {
            EvalMode::Centre
        };
        (run.on_event)(Event::EvalStart {
            total: v.len() as u64,
        });
        let r = self.evaluate_job(v, mode, None)?;
        run.record(&MetricsRecord::Eval {
            step: self.pos.step,
            mode: mode.as_str().into(),
            images: r.images,
            top1_err: r.top1_err,
            top5_err: r.top5_err,
        })?;
        Ok(Some((mode, r)))
    }

    /// A checkpoint of the current state: copied to the host here, written by the
    /// background writer while training goes on.
    fn save(&mut self, path: &Path, run: &mut RunState<'_>) -> Result<()> {
        // every rank checks, rank 0 alone writes what they all hold
        self.check_replicas()?;
        if !self.writes_files() {
            return Ok(());
        }
        let mut ck = self.capture()?;
        ck.set_epoch_sums(&run.epoch);
        self.checkpoints.write(path, ck)?;
        (run.on_event)(Event::Checkpoint(path));
        Ok(())
    }
}

/// The compute-only ceiling: `steps` training steps on one synthetic uint8 batch
/// that already sits on the device (no pipeline, no copies), after `warmup` steps.
/// Returns images per second. Changes the weights: use a throwaway trainer. (A free
/// function: it drives the trainer's step from outside the loop, as a benchmark.)
pub fn bench_compute(trainer: &mut Trainer, steps: u64, warmup: u64) -> Result<f64> {
    let device = trainer.model.device();
    let bs = trainer.config.batch_size as i64;
    let side = trainer.model.spec().input_side;
    let classes = trainer.model.spec().classes;
    tch::manual_seed(step_seed(trainer.config.seed, 1));
    let images = Tensor::f_randint_low(0, 256, [bs, side, side, 3], (Kind::Uint8, device))
        .ctx(|| "synthetic images".into())?;
    let labels = Tensor::f_randint(classes, [bs], (Kind::Int64, device))
        .ctx(|| "synthetic labels".into())?;
    let flips =
        Tensor::f_randint(2, [bs], (Kind::Int64, device)).ctx(|| "synthetic flips".into())?;
    let lighting =
        Tensor::f_randn([bs, 3], (Kind::Float, device)).ctx(|| "synthetic lighting".into())?;
    // Windows at the origin (the mean image, if any, is at least the crop's size).
    let windows =
        Tensor::f_zeros([bs, 3], (Kind::Int64, device)).ctx(|| "synthetic windows".into())?;
    let steps_of = |n: u64, this: &mut Trainer| -> Result<()> {
        for _ in 0..n {
            // The same on-device normalisation as the real loop.
            let input = this
                .dnorm
                .apply(&images, Some(&flips), Some(&lighting), Some(&windows))?;
            let batch = DeviceBatch {
                input,
                labels: labels.shallow_clone(),
                epoch: 0,
                index: 0,
            };
            let _ = this.train_step(&batch)?;
        }
        this.sync();
        Ok(())
    };
    steps_of(warmup, trainer)?;
    let t = Instant::now();
    steps_of(steps, trainer)?;
    Ok((steps as f64 * bs as f64) / t.elapsed().as_secs_f64().max(1e-9))
}
