//! The training loop: prefetched batches, the paper's update, a learning-rate
//! schedule driven by validation error, metrics windows, and checkpoints that let a
//! killed run continue exactly.
//!
//! Determinism: the weights are initialised from torch's generator seeded with the
//! run's seed, and before every step the generator is re-seeded from (seed, step), so
//! the dropout masks of step s are the same whether or not the run was resumed. The
//! data source is asked for (epoch, first batch), and the pipeline's keyed randomness
//! gives the same batches from there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sv_core::{ClassInfo, mix64};
use sv_shard::Dataset;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointMeta};
use crate::error::{Result, TorchContext, TrainError};
use crate::eval::{EvalMode, EvalResult, evaluate};
use crate::input::{DeviceNorm, InputScale, Normalization};
use crate::metrics::{MetricsRecord, MetricsSink};
use crate::model::{InitScheme, Model, ModelSpec};
use crate::optim::{PaperSgd, SgdConfig};
use crate::prefetch::{DeviceBatch, HostMemory, Prefetcher, StagedBatch};
use crate::schedule::{Schedule, ScheduleConfig};

/// Name of the latest checkpoint in the output directory.
pub const LAST_CHECKPOINT: &str = "last.safetensors";
/// Name of the checkpoint with the best validation top-1 error.
pub const BEST_CHECKPOINT: &str = "best.safetensors";
/// Name of the metrics log in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Everything a run is configured with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Registered model name (see [`crate::model::MODEL_NAMES`]).
    pub model: String,
    /// Override of the model's default initialisation.
    pub init: Option<InitScheme>,
    /// Override of the model's input scale (`alexnet`: the paper's centred raw values;
    /// `alexnet-owt`: mean/std as torchvision).
    #[serde(default)]
    pub input_scale: Option<InputScale>,
    /// Images per step (128 in the paper).
    pub batch_size: usize,
    /// Epochs to train in total.
    pub epochs: u64,
    /// Stop after this many steps in total (tests, benchmarks); a checkpoint is written.
    pub max_steps: Option<u64>,
    /// Initial learning rate (0.01).
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Momentum and weight decay.
    pub sgd: SgdConfig,
    /// Seed for init, dropout and (through the data source) data order and augmentation.
    pub seed: u64,
    /// Write `last.safetensors` every this many steps (0: only at epoch ends).
    pub checkpoint_every: u64,
    /// Steps per metrics window.
    pub log_every: u64,
    /// Evaluate on at most this many validation images per epoch.
    pub val_limit: Option<usize>,
    /// Views used by the final evaluation after the last epoch.
    pub final_ten_crop: bool,
    /// Batches staged ahead by the prefetch thread.
    pub prefetch_depth: usize,
    /// Epoch checkpoints kept besides last and best (0: none), see
    /// [`checkpoint::keep_epoch`].
    #[serde(default)]
    pub keep_epochs: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "alexnet".into(),
            init: None,
            input_scale: None,
            batch_size: 128,
            epochs: 90,
            max_steps: None,
            lr: 0.01,
            schedule: ScheduleConfig::paper(),
            sgd: SgdConfig::default(),
            seed: 0,
            checkpoint_every: 1000,
            log_every: 20,
            val_limit: None,
            final_ten_crop: true,
            prefetch_depth: 1,
            keep_epochs: 0,
        }
    }
}

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
}

/// A model with its optimiser, schedule and position.
pub struct Trainer {
    config: TrainConfig,
    model: Model,
    opt: PaperSgd,
    schedule: Schedule,
    norm: Normalization,
    dnorm: DeviceNorm,
    classes: Vec<ClassInfo>,
    step: u64,
    epoch: u64,
    batch_in_epoch: u64,
    best_top1: Option<f64>,
    out_dir: PathBuf,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.config.model)
            .field("step", &self.step)
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
        tch::manual_seed(step_seed(config.seed, u64::MAX));
        let model = Model::new(&spec, device)?;
        let opt = PaperSgd::new(model.params(), model.names(), config.sgd)?;
        let schedule = Schedule::new(config.schedule.clone(), config.lr)?;
        let dnorm = DeviceNorm::new(&norm, spec.input_scale, device)?;
        std::fs::create_dir_all(out_dir).map_err(crate::error::io_err(out_dir))?;
        Ok(Trainer {
            config,
            model,
            opt,
            schedule,
            norm,
            dnorm,
            classes,
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            best_top1: None,
            out_dir: out_dir.into(),
        })
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
        let saved: TrainConfig =
            serde_json::from_value(ck.meta.config.clone()).map_err(|e| TrainError::Json {
                path: path.into(),
                source: e,
            })?;
        let config = TrainConfig {
            model: saved.model,
            init: saved.init,
            input_scale: saved.input_scale,
            batch_size: saved.batch_size,
            lr: saved.lr,
            schedule: saved.schedule,
            sgd: saved.sgd,
            seed: saved.seed,
            ..config
        };
        let mut model = Model::new(&ck.meta.model, device)?;
        model.load_params(&ck.params, path)?;
        let mut opt = PaperSgd::new(model.params(), model.names(), config.sgd)?;
        let vel = ck.velocities_for(model.names(), path)?;
        opt.load_velocities(vel)?;
        let dnorm = DeviceNorm::new(&ck.meta.normalization, ck.meta.model.input_scale, device)?;
        std::fs::create_dir_all(out_dir).map_err(crate::error::io_err(out_dir))?;
        Ok(Trainer {
            config,
            model,
            opt,
            schedule: ck.meta.schedule,
            norm: ck.meta.normalization,
            dnorm,
            classes: ck.meta.classes,
            step: ck.meta.step,
            epoch: ck.meta.epoch,
            batch_in_epoch: ck.meta.batch_in_epoch,
            best_top1: ck.meta.best_top1,
            out_dir: out_dir.into(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Steps taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Current (epoch, batch within epoch).
    pub fn position(&self) -> (u64, u64) {
        (self.epoch, self.batch_in_epoch)
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
            step: self.step,
            epoch: self.epoch,
            batch_in_epoch: self.batch_in_epoch,
            schedule: self.schedule.clone(),
            seed: self.config.seed,
            config: serde_json::to_value(&self.config).map_err(|e| TrainError::Json {
                path: self.out_dir.clone(),
                source: e,
            })?,
            best_top1: self.best_top1,
        })
    }

    /// Writes the full state atomically to `path`.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        checkpoint::save(
            path,
            &self.meta()?,
            self.model.names(),
            self.model.params(),
            self.opt.velocities(),
        )
    }

    /// One optimiser step on a device batch; returns the detached loss and the number of
    /// top-1 misses as device tensors (read them only at window ends: reading syncs).
    pub fn train_step(&mut self, batch: &DeviceBatch) -> Result<(Tensor, Tensor)> {
        tch::manual_seed(step_seed(self.config.seed, self.step));
        let logits = self.model.forward(&batch.input, true)?;
        let loss = logits
            .f_cross_entropy_loss::<Tensor>(&batch.labels, None, tch::Reduction::Mean, -100, 0.0)
            .ctx(|| "loss".into())?;
        loss.f_backward()
            .ctx(|| format!("backward at step {}", self.step))?;
        self.opt.step(self.model.params(), self.schedule.lr)?;
        let misses = logits
            .f_detach()
            .and_then(|l| l.f_argmax(-1, false))
            .and_then(|a| a.f_ne_tensor(&batch.labels))
            .and_then(|m| m.f_sum(Kind::Float))
            .ctx(|| "train error".into())?;
        self.step += 1;
        Ok((loss.f_detach().ctx(|| "loss".into())?, misses))
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

    /// Trains until `config.epochs` epochs (or `max_steps` steps) are done, evaluating on
    /// `val` at each epoch end when given.
    pub fn run(
        &mut self,
        data: &mut dyn TrainData,
        val: Option<&Dataset>,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<TrainOutcome> {
        let bpe = data.batches_per_epoch();
        if bpe == 0 {
            return Err(TrainError::Data(
                "the training set has fewer images than one batch".into(),
            ));
        }
        let device = self.model.device();
        let memory = HostMemory::for_device(device);
        let mut metrics = MetricsSink::open(&self.out_dir, self.step)?;
        let last = self.out_dir.join(LAST_CHECKPOINT);
        let mut last_val = None;
        let (mut total_wait, mut total_time, mut total_images) =
            (Duration::ZERO, Duration::ZERO, 0u64);
        let max_steps = self.config.max_steps;
        let reached_max = move |s: u64| max_steps.is_some_and(|m| s >= m);

        'epochs: while self.epoch < self.config.epochs {
            if reached_max(self.step) {
                break;
            }
            let mut pf = Prefetcher::spawn(
                data.epoch(self.epoch, self.batch_in_epoch, memory)?,
                self.config.prefetch_depth,
            )?;
            let epoch_start = Instant::now();
            let (mut ep_loss_sum, mut ep_loss_n, mut ep_wait, mut ep_images) =
                (0.0, 0u64, Duration::ZERO, 0u64);
            let mut window_start = Instant::now();
            let (mut win_loss, mut win_miss): (Option<Tensor>, Option<Tensor>) = (None, None);
            let (mut win_steps, mut win_images) = (0u64, 0u64);
            let mut next = match pf.next_batch() {
                Some(b) => Some(b?.upload(device, &self.dnorm)?),
                None => None,
            };
            while let Some(cur) = next.take() {
                if cur.epoch != self.epoch || cur.index != self.batch_in_epoch {
                    return Err(TrainError::Data(format!(
                        "expected batch {} of epoch {}, the source gave batch {} of epoch {}",
                        self.batch_in_epoch, self.epoch, cur.index, cur.epoch
                    )));
                }
                let n = cur.labels.size()[0] as u64;
                let (loss, miss) = self.train_step(&cur)?;
                self.batch_in_epoch += 1;
                // Batch i+1: staged by the thread during step i; its copy is enqueued
                // behind step i's kernels.
                let stop_now = reached_max(self.step) || self.batch_in_epoch >= bpe;
                if !stop_now {
                    next = match pf.next_batch() {
                        Some(b) => Some(b?.upload(device, &self.dnorm)?),
                        None => None,
                    };
                }
                win_loss = Some(match win_loss {
                    None => loss,
                    Some(s) => s + loss,
                });
                win_miss = Some(match win_miss {
                    None => miss,
                    Some(s) => s + miss,
                });
                win_steps += 1;
                win_images += n;
                on_event(Event::Step {
                    step: self.step,
                    epoch: self.epoch,
                    index: self.batch_in_epoch - 1,
                    of: bpe,
                });
                if win_steps == self.config.log_every || stop_now {
                    self.sync();
                    let elapsed = window_start.elapsed();
                    let waited = pf.take_waited();
                    let loss =
                        win_loss.take().map_or(0.0, |t| t.double_value(&[])) / win_steps as f64;
                    let miss = win_miss.take().map_or(0.0, |t| t.double_value(&[]));
                    if !loss.is_finite() {
                        return Err(TrainError::Diverged {
                            step: self.step,
                            loss,
                        });
                    }
                    let secs = elapsed.as_secs_f64().max(1e-9);
                    let rec = MetricsRecord::Train {
                        step: self.step,
                        epoch: self.epoch,
                        loss,
                        top1_err: miss / win_images as f64,
                        lr: self.schedule.lr,
                        images_per_s: win_images as f64 / secs,
                        data_wait_share: (waited.as_secs_f64() / secs).min(1.0),
                    };
                    metrics.write(&rec)?;
                    on_event(Event::Record(&rec));
                    ep_loss_sum += loss * win_steps as f64;
                    ep_loss_n += win_steps;
                    ep_wait += waited;
                    ep_images += win_images;
                    win_steps = 0;
                    win_images = 0;
                    window_start = Instant::now();
                }
                if self.batch_in_epoch >= bpe {
                    break;
                }
                if reached_max(self.step) {
                    drop(pf);
                    self.save_checkpoint(&last)?;
                    on_event(Event::Checkpoint(&last));
                    let t = epoch_start.elapsed();
                    total_wait += ep_wait;
                    total_time += t;
                    total_images += ep_images;
                    break 'epochs;
                }
                if self.config.checkpoint_every > 0
                    && self.step.is_multiple_of(self.config.checkpoint_every)
                {
                    self.save_checkpoint(&last)?;
                    on_event(Event::Checkpoint(&last));
                }
            }
            drop(pf);
            if self.batch_in_epoch < bpe {
                return Err(TrainError::Data(format!(
                    "epoch {} ended after {} of {bpe} batches",
                    self.epoch, self.batch_in_epoch
                )));
            }
            let ep_time = epoch_start.elapsed();
            total_wait += ep_wait;
            total_time += ep_time;
            total_images += ep_images;
            // End of epoch: validate, step the schedule, checkpoint.
            let val_result = match val {
                Some(v) => {
                    on_event(Event::EvalStart {
                        total: self.config.val_limit.map_or(v.len(), |l| l.min(v.len())) as u64,
                    });
                    Some(self.evaluate(v, EvalMode::Centre, self.config.val_limit)?)
                }
                None => None,
            };
            let ended = self.epoch;
            self.schedule
                .end_epoch(ended, val_result.map(|r| r.top1_err));
            self.epoch += 1;
            self.batch_in_epoch = 0;
            let secs = ep_time.as_secs_f64().max(1e-9);
            let rec = MetricsRecord::Epoch {
                step: self.step,
                epoch: ended,
                train_loss: if ep_loss_n > 0 {
                    ep_loss_sum / ep_loss_n as f64
                } else {
                    f64::NAN
                },
                val_top1_err: val_result.map(|r| r.top1_err),
                val_top5_err: val_result.map(|r| r.top5_err),
                lr: self.schedule.lr,
                images_per_s: ep_images as f64 / secs,
                data_wait_share: (ep_wait.as_secs_f64() / secs).min(1.0),
            };
            metrics.write(&rec)?;
            on_event(Event::Record(&rec));
            self.save_checkpoint(&last)?;
            on_event(Event::Checkpoint(&last));
            let keep = self.config.keep_epochs;
            if let Some(p) = checkpoint::keep_epoch(&self.out_dir, &last, self.epoch, keep)? {
                on_event(Event::Checkpoint(&p));
            }
            if let Some(r) = val_result {
                if self.best_top1.is_none_or(|b| r.top1_err < b) {
                    self.best_top1 = Some(r.top1_err);
                    let best = self.out_dir.join(BEST_CHECKPOINT);
                    self.save_checkpoint(&best)?;
                    on_event(Event::Checkpoint(&best));
                }
                last_val = Some(r);
            }
        }

        let finished = self.epoch >= self.config.epochs;
        let final_eval = match val {
            Some(v) if finished => {
                let mode = if self.config.final_ten_crop {
                    EvalMode::TenCrop
                } else {
                    EvalMode::Centre
                };
                on_event(Event::EvalStart {
                    total: v.len() as u64,
                });
                let r = self.evaluate(v, mode, None)?;
                let rec = MetricsRecord::Eval {
                    step: self.step,
                    mode: mode.as_str().into(),
                    images: r.images,
                    top1_err: r.top1_err,
                    top5_err: r.top5_err,
                };
                metrics.write(&rec)?;
                on_event(Event::Record(&rec));
                Some((mode, r))
            }
            _ => None,
        };
        let secs = total_time.as_secs_f64().max(1e-9);
        Ok(TrainOutcome {
            steps: self.step,
            epochs_done: self.epoch,
            last_val,
            final_eval,
            images_per_s: total_images as f64 / secs,
            data_wait_share: (total_wait.as_secs_f64() / secs).min(1.0),
            checkpoint: last,
        })
    }

    /// The compute-only ceiling: `steps` training steps on one synthetic uint8 batch
    /// that already sits on the device (no pipeline, no copies), after `warmup` steps.
    /// Returns images per second. Changes the weights: use a throwaway trainer.
    pub fn bench_compute(&mut self, steps: u64, warmup: u64) -> Result<f64> {
        let device = self.model.device();
        let bs = self.config.batch_size as i64;
        let side = self.model.spec().input_side;
        let classes = self.model.spec().classes;
        tch::manual_seed(step_seed(self.config.seed, 1));
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
        let run = |n: u64, this: &mut Trainer| -> Result<()> {
            for _ in 0..n {
                // The same on-device normalisation as the real loop.
                let input =
                    this.dnorm
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
        run(warmup, self)?;
        let t = Instant::now();
        run(steps, self)?;
        Ok((steps as f64 * bs as f64) / t.elapsed().as_secs_f64().max(1e-9))
    }
}
