//! A run's settings in two halves, each stored typed in every checkpoint:
//!
//! - [`RunSpec`], what fixes a run: the model (name, initialisation, input scale,
//!   dropout), the batch, the update rule (rate, momentum, weight decay), the schedule's
//!   shape, the seed, and what the batches are made of ([`DataSettings`]). A resumed
//!   run continues exactly only with the same ones.
//! - [`RunLimits`], what may change from one invocation to the next: how long to train
//!   (epochs, max steps), how often to log and checkpoint, what to keep, and the
//!   run-time choices that do not change the arithmetic's meaning (precision,
//!   channels-last, the copy stream, prefetch depth).
//!
//! [`TrainConfig`] is what callers fill in: both halves in one flat struct (and one
//! flat JSON object, the `config` that checkpoints of format versions 1 and 2
//! stored). [`TrainConfig::spec`] and [`TrainConfig::limits`] split it,
//! [`TrainConfig::from_parts`] joins them; checkpoints store the two halves.
//!
//! Resuming is `saved spec + today's limits` ([`TrainConfig::resumed`]); the one place
//! that says which difference is refused is [`RunSpec::refused_changes`].

use serde::{Deserialize, Serialize};

use crate::data::DataSettings;
use crate::input::InputScale;
use crate::model::InitScheme;
use crate::optim::SgdConfig;
use crate::params::Precision;
use crate::schedule::ScheduleConfig;
use tch::Device;

/// What fixes a run (see the module header).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Registered model name (see [`crate::model::MODEL_NAMES`]).
    pub model: String,
    /// Override of the model's default initialisation.
    pub init: Option<InitScheme>,
    /// Override of the model's input scale (`alexnet`: the paper's centred raw values;
    /// `alexnet-owt`: mean/std as torchvision).
    #[serde(default)]
    pub input_scale: Option<InputScale>,
    /// Override of the dropout probability of every dropout layer (the models: 0.5).
    /// 0 turns dropout off, as tests comparing runs step by step need.
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Images per step (128 in the paper; per rank in a data-parallel job).
    pub batch_size: usize,
    /// Initial learning rate (0.01).
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Momentum and weight decay.
    pub sgd: SgdConfig,
    /// Seed for init, dropout and (through the data source) data order and augmentation.
    pub seed: u64,
    /// What the data source makes batches of (image side, augmentation, loader), for
    /// the checkpoint: the trainer does not read it; the caller keeps it true to the
    /// [`crate::data::TrainData`] it passes. None in files written before it was kept.
    #[serde(default)]
    pub data: Option<DataSettings>,
}

impl Default for RunSpec {
    fn default() -> Self {
        TrainConfig::default().spec()
    }
}

/// What may change between invocations of a run (see the module header).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunLimits {
    /// Epochs to train in total.
    pub epochs: u64,
    /// Stop after this many steps in total (tests, benchmarks); a checkpoint is written.
    pub max_steps: Option<u64>,
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
    /// Precision of the forward and backward passes (default: bf16 on CUDA, fp32 on
    /// the CPU).
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Channels-last input and convolutions (default: on CUDA).
    #[serde(default)]
    pub channels_last: Option<bool>,
    /// Initial fp16 loss scale (default 65536, PyTorch GradScaler's); a resumed run
    /// continues its checkpoint's scaler instead, when it has one.
    #[serde(default)]
    pub loss_scale: Option<f64>,
    /// Copy batches to a CUDA device on a side stream (default: on).
    #[serde(default)]
    pub copy_stream: Option<bool>,
    /// Epoch checkpoints kept besides last and best (0: none), see
    /// [`crate::checkpoint::keep_epoch`].
    #[serde(default)]
    pub keep_epochs: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        TrainConfig::default().limits()
    }
}

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
    /// Precision of the forward and backward passes (default: bf16 on CUDA, fp32 on
    /// the CPU). A run-time choice: a resumed run takes this invocation's.
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Channels-last input and convolutions (default: on CUDA).
    #[serde(default)]
    pub channels_last: Option<bool>,
    /// Initial fp16 loss scale (default 65536, PyTorch GradScaler's).
    #[serde(default)]
    pub loss_scale: Option<f64>,
    /// Copy batches to a CUDA device on a side stream (default: on).
    #[serde(default)]
    pub copy_stream: Option<bool>,
    /// Override of the dropout probability of every dropout layer (the models: 0.5).
    /// 0 turns dropout off, as tests comparing runs step by step need.
    #[serde(default)]
    pub dropout: Option<f64>,
    /// What the data source makes batches of (image side, augmentation, loader), for
    /// the checkpoint: the trainer does not read it; the caller keeps it true to the
    /// [`crate::data::TrainData`] it passes.
    #[serde(default)]
    pub data: Option<DataSettings>,
    /// Epoch checkpoints kept besides last and best (0: none), see
    /// [`crate::checkpoint::keep_epoch`].
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
            precision: None,
            channels_last: None,
            loss_scale: None,
            copy_stream: None,
            dropout: None,
            data: None,
            keep_epochs: 0,
        }
    }
}

impl TrainConfig {
    /// The precision on `device`: the configured one, else bf16 on CUDA, fp32 on CPU.
    pub fn precision_on(&self, device: Device) -> Precision {
        self.precision
            .unwrap_or_else(|| Precision::default_for(device))
    }

    /// Whether inputs are channels-last on `device`: as configured, else on CUDA.
    pub fn channels_last_on(&self, device: Device) -> bool {
        self.channels_last.unwrap_or(device.is_cuda())
    }
}

impl TrainConfig {
    /// What fixes this run.
    pub fn spec(&self) -> RunSpec {
        RunSpec {
            model: self.model.clone(),
            init: self.init,
            input_scale: self.input_scale,
            dropout: self.dropout,
            batch_size: self.batch_size,
            lr: self.lr,
            schedule: self.schedule.clone(),
            sgd: self.sgd,
            seed: self.seed,
            data: self.data.clone(),
        }
    }

    /// What may change between this run's invocations.
    pub fn limits(&self) -> RunLimits {
        RunLimits {
            epochs: self.epochs,
            max_steps: self.max_steps,
            checkpoint_every: self.checkpoint_every,
            log_every: self.log_every,
            val_limit: self.val_limit,
            final_ten_crop: self.final_ten_crop,
            prefetch_depth: self.prefetch_depth,
            precision: self.precision,
            channels_last: self.channels_last,
            loss_scale: self.loss_scale,
            copy_stream: self.copy_stream,
            keep_epochs: self.keep_epochs,
        }
    }

    /// The configuration of `spec` and `limits`.
    pub fn from_parts(spec: RunSpec, limits: RunLimits) -> TrainConfig {
        let RunSpec {
            model,
            init,
            input_scale,
            dropout,
            batch_size,
            lr,
            schedule,
            sgd,
            seed,
            data,
        } = spec;
        let RunLimits {
            epochs,
            max_steps,
            checkpoint_every,
            log_every,
            val_limit,
            final_ten_crop,
            prefetch_depth,
            precision,
            channels_last,
            loss_scale,
            copy_stream,
            keep_epochs,
        } = limits;
        TrainConfig {
            model,
            init,
            input_scale,
            batch_size,
            epochs,
            max_steps,
            lr,
            schedule,
            sgd,
            seed,
            checkpoint_every,
            log_every,
            val_limit,
            final_ten_crop,
            prefetch_depth,
            precision,
            channels_last,
            loss_scale,
            copy_stream,
            dropout,
            data,
            keep_epochs,
        }
    }

    /// The configuration a resumed run continues with: the `saved` run's spec and
    /// `today`'s limits. A checkpoint written before data settings were kept takes
    /// today's.
    pub fn resumed(saved: RunSpec, today: &TrainConfig) -> TrainConfig {
        let data = saved.data.clone().or_else(|| today.data.clone());
        TrainConfig::from_parts(RunSpec { data, ..saved }, today.limits())
    }
}

/// A setting that differs between a run's spec and the one an invocation asks for:
/// a resumed run refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecChange {
    /// The setting, as its path in the configuration's JSON (`batch_size`,
    /// `sgd.momentum`, `schedule.patience`, `data.loader`).
    pub setting: &'static str,
    /// The run's value, in words.
    pub saved: String,
    /// The value asked for now, in words.
    pub now: String,
}

impl std::fmt::Display for SpecChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (the checkpoint's run: {})",
            self.setting, self.now, self.saved
        )
    }
}

/// A value as the configuration's JSON writes it (`paper`, `0.9`, `none`).
fn shown<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) => "the default".into(),
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// The kind of a schedule, as the configuration names it.
pub fn schedule_kind(s: &ScheduleConfig) -> &'static str {
    match s {
        ScheduleConfig::Plateau { .. } => "plateau",
        ScheduleConfig::Step { .. } => "step",
        ScheduleConfig::Constant => "constant",
    }
}

/// The differences found so far.
#[derive(Default)]
struct Diff(Vec<SpecChange>);

impl Diff {
    fn cmp(&mut self, setting: &'static str, saved: String, now: String) {
        if saved != now {
            self.0.push(SpecChange {
                setting,
                saved,
                now,
            });
        }
    }

    /// The same setting of two values, as the configuration's JSON writes them.
    fn value<T: Serialize>(&mut self, setting: &'static str, saved: &T, now: &T) {
        self.cmp(setting, shown(saved), shown(now));
    }

    /// The schedules: their kind, then (of the same kind) each constant.
    fn schedule(&mut self, a: &ScheduleConfig, b: &ScheduleConfig) {
        use ScheduleConfig::{Plateau, Step};
        match (a, b) {
            (
                Plateau {
                    patience,
                    threshold,
                    factor,
                    min_lr,
                    max_drops,
                },
                Plateau {
                    patience: p2,
                    threshold: t2,
                    factor: f2,
                    min_lr: m2,
                    max_drops: d2,
                },
            ) => {
                self.value("schedule.patience", patience, p2);
                self.value("schedule.threshold", threshold, t2);
                self.value("schedule.factor", factor, f2);
                self.value("schedule.min_lr", min_lr, m2);
                self.value("schedule.max_drops", max_drops, d2);
            }
            (
                Step {
                    every,
                    factor,
                    max_drops,
                },
                Step {
                    every: e2,
                    factor: f2,
                    max_drops: d2,
                },
            ) => {
                self.value("schedule.every", every, e2);
                self.value("schedule.factor", factor, f2);
                self.value("schedule.max_drops", max_drops, d2);
            }
            _ => self.cmp("schedule", schedule_kind(a).into(), schedule_kind(b).into()),
        }
    }

    /// What the batches are made of.
    fn data(&mut self, a: &DataSettings, b: &DataSettings) {
        self.value("data.side", &a.side, &b.side);
        self.value("data.mirror", &a.mirror, &b.mirror);
        self.value("data.loader", &a.loader, &b.loader);
        let convention =
            |d: &DataSettings| d.lighting.map_or("none".into(), |l| shown(&l.convention));
        self.cmp("data.lighting", convention(a), convention(b));
        if let (Some(la), Some(lb)) = (&a.lighting, &b.lighting) {
            self.cmp(
                "data.lighting.eigval",
                format!("{:?}", la.eigval),
                format!("{:?}", lb.eigval),
            );
            self.cmp(
                "data.lighting.eigvec",
                format!("{:?} std {}", la.eigvec, la.std),
                format!("{:?} std {}", lb.eigvec, lb.std),
            );
        }
        if let (Some(da), Some(db)) = (&a.dataset, &b.dataset) {
            self.cmp("data.dataset", da.clone(), db.clone());
        }
    }
}

impl RunSpec {
    /// Every setting of `now` that differs from this run's: what a resumed run
    /// refuses (none: it may continue). A run whose data settings were not kept (an
    /// older checkpoint) is compared on the rest. This is the one place that decides
    /// which change is refused: the trainer and the CLI both ask it.
    pub fn refused_changes(&self, now: &RunSpec) -> Vec<SpecChange> {
        let mut d = Diff::default();
        d.value("model", &self.model, &now.model);
        d.value("init", &self.init, &now.init);
        d.value("input_scale", &self.input_scale, &now.input_scale);
        d.value("dropout", &self.dropout, &now.dropout);
        d.value("batch_size", &self.batch_size, &now.batch_size);
        d.value("lr", &self.lr, &now.lr);
        d.value("sgd.momentum", &self.sgd.momentum, &now.sgd.momentum);
        d.value(
            "sgd.weight_decay",
            &self.sgd.weight_decay,
            &now.sgd.weight_decay,
        );
        d.value(
            "sgd.decay_biases",
            &self.sgd.decay_biases,
            &now.sgd.decay_biases,
        );
        d.value("seed", &self.seed, &now.seed);
        d.schedule(&self.schedule, &now.schedule);
        if let (Some(a), Some(b)) = (&self.data, &now.data) {
            d.data(a, b);
        }
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flat_json_of_older_checkpoints_reads_into_both_halves() {
        // the `config` object of a format-2 checkpoint, as the trainer wrote it
        let old = r#"{"model":"alexnet-tiny","init":null,"input_scale":"std","batch_size":8,
            "epochs":3,"max_steps":10,"lr":0.005,"schedule":{"kind":"plateau","patience":4,
            "threshold":0.001,"factor":0.1,"min_lr":1e-7,"max_drops":3},
            "sgd":{"momentum":0.9,"weight_decay":0.0005,"decay_biases":true},"seed":3,
            "checkpoint_every":1000,"log_every":4,"val_limit":null,"final_ten_crop":true,
            "prefetch_depth":1,"precision":null,"channels_last":null,"loss_scale":65536.0,
            "copy_stream":true,"dropout":null,"data":null,"keep_epochs":0}"#;
        let c: TrainConfig = serde_json::from_str(old).unwrap();
        let (spec, limits) = (c.spec(), c.limits());
        assert_eq!(spec.model, "alexnet-tiny");
        assert_eq!((spec.batch_size, spec.seed, spec.lr), (8, 3, 0.005));
        assert_eq!((limits.epochs, limits.max_steps), (3, Some(10)));
        assert_eq!(limits.log_every, 4);
        // the halves join into the same configuration, which writes the same object
        assert_eq!(TrainConfig::from_parts(spec, limits), c);
        let again: serde_json::Value = serde_json::to_value(&c).unwrap();
        let want: serde_json::Value = serde_json::from_str(old).unwrap();
        assert_eq!(again, want);
    }

    #[test]
    fn a_resumed_run_keeps_its_spec_and_takes_todays_limits() {
        let saved = RunSpec {
            batch_size: 8,
            seed: 3,
            ..RunSpec::default()
        };
        let today = TrainConfig {
            batch_size: 16,
            epochs: 7,
            ..TrainConfig::default()
        };
        let r = TrainConfig::resumed(saved.clone(), &today);
        assert_eq!(r.spec(), saved);
        assert_eq!(r.epochs, 7);
        let refused = saved.refused_changes(&today.spec());
        let names: Vec<_> = refused.iter().map(|c| c.setting).collect();
        assert_eq!(names, ["batch_size", "seed"]);
        assert_eq!(
            refused[0].to_string(),
            "batch_size 16 (the checkpoint's run: 8)"
        );
        assert!(saved.refused_changes(&saved).is_empty());
    }

    #[test]
    fn every_part_of_the_schedule_counts() {
        let plateau = RunSpec::default();
        let mut other = plateau.clone();
        if let ScheduleConfig::Plateau { patience, .. } = &mut other.schedule {
            *patience += 1;
        }
        assert_eq!(
            plateau.refused_changes(&other)[0].setting,
            "schedule.patience"
        );
        let constant = RunSpec {
            schedule: ScheduleConfig::Constant,
            ..RunSpec::default()
        };
        let c = plateau.refused_changes(&constant);
        assert_eq!((c.len(), c[0].setting), (1, "schedule"));
        assert_eq!(
            (c[0].saved.as_str(), c[0].now.as_str()),
            ("plateau", "constant")
        );
    }
}
