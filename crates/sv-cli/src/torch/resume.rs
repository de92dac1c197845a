//! `train --resume`: the settings a resumed run continues with, from its checkpoint
//! and the flags typed now.
//!
//! A checkpoint's run continues exactly as it would have without the interruption, so:
//! - its labels must be the training set's (same wnids, same order) and its data the
//!   same (the set's manifest checksum and image side);
//! - settings that define the run (model, init, input scale, batch size, learning
//!   rate, momentum, weight decay, schedule, seed, statistics, mean image, lighting,
//!   reflections, loader) are the checkpoint's; typed with another value they are
//!   refused, naming the flag, the checkpoint's value and the one given;
//! - settings that can change between invocations (epochs, max steps, intervals,
//!   validation limit, final ten-crop, precision, channels-last, copy stream) are the
//!   checkpoint's unless typed; a typed change applies and is reported.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sv_shard::Dataset;
use sv_train::checkpoint::{CheckpointHeader, MEAN_IMAGE_TENSOR};
use sv_train::data::DataSettings;
use sv_train::input::Normalization;
use sv_train::schedule::ScheduleConfig;
use sv_train::sv_pipeline::Lighting;
use sv_train::trainer::TrainConfig;

use sv_cli::cli_args::{Given, TrainArgs as Args};

/// What this invocation says, next to the checkpoint.
pub struct Invocation<'a> {
    /// The flags.
    pub args: &'a Args,
    /// Which of them were typed.
    pub given: &'a Given,
    /// The configuration the flags make.
    pub config: TrainConfig,
    /// The training set.
    pub train: &'a Dataset,
    /// The normalisation of `--stats` and `--mean-image` (or the defaults).
    pub norm: &'a Normalization,
    /// The data settings the flags make.
    pub data: DataSettings,
}

/// A value as the flags write it (`paper`, `fp32`).
fn flag_value<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) => "the default".into(),
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

fn schedule_kind(s: &ScheduleConfig) -> &'static str {
    match s {
        ScheduleConfig::Plateau { .. } => "plateau",
        ScheduleConfig::Step { .. } => "step",
        ScheduleConfig::Constant => "constant",
    }
}

/// The comparisons: contradictions (refused) and changes (applied, reported).
struct Compare<'a> {
    given: &'a Given,
    conflicts: Vec<String>,
    changes: Vec<String>,
}

impl Compare<'_> {
    /// A setting fixed by the checkpoint: typed with another value, it is refused.
    fn fixed<T: PartialEq>(&mut self, id: &str, saved: &T, now: &T, show: impl Fn(&T) -> String) {
        if self.given.has(id) && saved != now {
            self.conflicts.push(format!(
                "--{} {} (the checkpoint's run: {})",
                id.replace('_', "-"),
                show(now),
                show(saved)
            ));
        }
    }

    /// A flag that makes no sense with the checkpoint's settings.
    fn misplaced(&mut self, id: &str, why: String) {
        if self.given.has(id) {
            self.conflicts
                .push(format!("--{} ({why})", id.replace('_', "-")));
        }
    }

    /// A setting that may change: the value typed now, else the checkpoint's.
    fn changeable<T: PartialEq + Clone>(
        &mut self,
        id: &str,
        saved: &T,
        now: &T,
        show: impl Fn(&T) -> String,
    ) -> T {
        if !self.given.has(id) {
            return saved.clone();
        }
        if saved != now {
            self.changes.push(format!(
                "--{} {} (the checkpoint's run: {})",
                id.replace('_', "-"),
                show(now),
                show(saved)
            ));
        }
        now.clone()
    }
}

/// The schedule flags against the checkpoint's schedule.
fn compare_schedule(
    c: &mut Compare<'_>,
    args: &Args,
    saved: &ScheduleConfig,
    now: &ScheduleConfig,
) {
    let kind = schedule_kind(saved);
    c.fixed("schedule", &kind, &schedule_kind(now), |k| k.to_string());
    let factor = 1.0 / args.lr_divisor;
    let lr_divisor = |f: &f64| format!("{}", 1.0 / f);
    match *saved {
        ScheduleConfig::Plateau {
            patience,
            threshold,
            factor: saved_factor,
            max_drops,
            ..
        } => {
            c.fixed("patience", &patience, &args.patience, u32::to_string);
            c.fixed("threshold", &threshold, &args.threshold, f64::to_string);
            c.fixed("lr_divisor", &saved_factor, &factor, lr_divisor);
            c.fixed("max_drops", &max_drops, &args.max_drops, u32::to_string);
            c.misplaced(
                "step_every",
                format!("the checkpoint's run uses the {kind} schedule"),
            );
        }
        ScheduleConfig::Step {
            every,
            factor: saved_factor,
            max_drops,
        } => {
            c.fixed("step_every", &every, &args.step_every, u32::to_string);
            c.fixed("lr_divisor", &saved_factor, &factor, lr_divisor);
            c.fixed("max_drops", &max_drops, &args.max_drops, u32::to_string);
            for id in ["patience", "threshold"] {
                c.misplaced(id, format!("the checkpoint's run uses the {kind} schedule"));
            }
        }
        ScheduleConfig::Constant => {
            for id in [
                "patience",
                "threshold",
                "lr_divisor",
                "max_drops",
                "step_every",
            ] {
                c.misplaced(id, format!("the checkpoint's run uses the {kind} schedule"));
            }
        }
    }
}

/// The data flags against the checkpoint's data settings.
fn compare_data(
    c: &mut Compare<'_>,
    inv: &Invocation<'_>,
    header: &CheckpointHeader,
) -> Result<()> {
    let meta = &header.meta;
    let train_dir = inv
        .args
        .train
        .as_deref()
        .unwrap_or(std::path::Path::new("?"));
    if let Some(saved) = &saved_data(meta)? {
        let now = &inv.data;
        if saved.side != now.side {
            bail!(
                "the checkpoint's run trained on {s}x{s} images, {} holds {n}x{n} images",
                train_dir.display(),
                s = saved.side,
                n = now.side
            );
        }
        if let (Some(s), Some(n)) = (&saved.dataset, &now.dataset)
            && s != n
        {
            bail!(
                "{} is not the training set the checkpoint's run trained on (manifest checksum \
                 {n}, the run's {s})",
                train_dir.display()
            );
        }
        c.fixed("no_mirror", &!saved.mirror, &!now.mirror, |v| v.to_string());
        c.fixed("loader", &saved.loader, &now.loader, String::clone);
        // --lighting: the convention (or none); --stats: the numbers, where both have any
        let convention = saved
            .lighting
            .map_or("none".to_string(), |l| flag_value(&l.convention));
        let lighting = inv.args.lighting.as_str().to_string();
        c.fixed("lighting", &convention, &lighting, String::clone);
        if let (Some(s), Some(n)) = (&saved.lighting, &now.lighting) {
            let numbers = |l: &Lighting| (l.eigval, l.eigvec, l.std);
            let show = |l: &(_, _, _)| format!("lighting eigenvalues {:?}", l.0);
            c.fixed("stats", &numbers(s), &numbers(n), show);
        }
    } else {
        eprintln!(
            "resuming: the checkpoint does not record its data settings (written before they \
             were kept); this invocation's --stats, --lighting, --no-mirror and --loader apply"
        );
    }
    let show = |v: &[f64; 3]| format!("{v:?}");
    c.fixed("stats", &meta.normalization.mean, &inv.norm.mean, show);
    c.fixed("stats", &meta.normalization.std, &inv.norm.std, show);
    if c.given.has("mean_image") {
        let file = inv
            .args
            .mean_image
            .as_deref()
            .unwrap_or(std::path::Path::new("?"));
        let saved = header
            .tensor_crcs
            .as_ref()
            .map(|crcs| crcs.get(MEAN_IMAGE_TENSOR).copied());
        let now = inv.norm.mean_image.as_ref().map(|m| {
            let bytes: Vec<u8> = m.chw.iter().flat_map(|v| v.to_le_bytes()).collect();
            crc32fast::hash(&bytes)
        });
        match saved {
            // a checkpoint without checksums cannot say what its mean image was
            None => eprintln!(
                "resuming: --mean-image is ignored, the normalisation saved in the checkpoint \
                 applies"
            ),
            Some(None) => c.conflicts.push(format!(
                "--mean-image {} (the checkpoint's run subtracted the channel mean, no mean image)",
                file.display()
            )),
            Some(s) if s != now => c.conflicts.push(format!(
                "--mean-image {} (another mean image than the checkpoint's run subtracted)",
                file.display()
            )),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The checkpoint's data settings, if it kept them.
fn saved_data(meta: &sv_train::checkpoint::CheckpointMeta) -> Result<Option<DataSettings>> {
    Ok(saved_config(meta)?.data)
}

fn saved_config(meta: &sv_train::checkpoint::CheckpointMeta) -> Result<TrainConfig> {
    // the checkpoint's settings are typed (read and checked when it was loaded)
    Ok(meta.config())
}

/// Checks this invocation against the checkpoint and returns the configuration the
/// resumed run continues with.
pub fn settings(inv: &Invocation<'_>, header: &CheckpointHeader) -> Result<TrainConfig> {
    let meta = &header.meta;
    let train_dir = inv
        .args
        .train
        .as_deref()
        .unwrap_or(std::path::Path::new("?"));
    sv_core::compare_classes(
        "the checkpoint",
        &meta.classes,
        &format!("train ({})", train_dir.display()),
        inv.train.classes(),
    )
    .context("a resumed run's labels must mean what they meant")?;
    let saved = saved_config(meta)?;
    let now = &inv.config;
    let args = inv.args;
    let mut c = Compare {
        given: inv.given,
        conflicts: Vec::new(),
        changes: Vec::new(),
    };
    let num = |v: &f64| v.to_string();
    c.fixed(
        "model",
        &meta.model.name,
        &args.model.as_str().to_string(),
        String::clone,
    );
    c.fixed("init", &Some(meta.model.init), &now.init, flag_value);
    c.fixed(
        "input_scale",
        &Some(meta.model.input_scale),
        &now.input_scale,
        flag_value,
    );
    c.fixed(
        "batch_size",
        &saved.batch_size,
        &now.batch_size,
        usize::to_string,
    );
    c.fixed("lr", &saved.lr, &now.lr, num);
    c.fixed("momentum", &saved.sgd.momentum, &now.sgd.momentum, num);
    c.fixed(
        "weight_decay",
        &saved.sgd.weight_decay,
        &now.sgd.weight_decay,
        num,
    );
    c.fixed(
        "bias_decay",
        &saved.sgd.decay_biases,
        &now.sgd.decay_biases,
        bool::to_string,
    );
    c.fixed("seed", &saved.seed, &now.seed, u64::to_string);
    compare_schedule(&mut c, args, &saved.schedule, &now.schedule);
    compare_data(&mut c, inv, header)?;
    let opt = |v: &Option<u64>| v.map_or("none".into(), |v| v.to_string());
    let resumed = TrainConfig {
        epochs: c.changeable("epochs", &saved.epochs, &now.epochs, u64::to_string),
        max_steps: c.changeable("max_steps", &saved.max_steps, &now.max_steps, opt),
        checkpoint_every: c.changeable(
            "checkpoint_every",
            &saved.checkpoint_every,
            &now.checkpoint_every,
            u64::to_string,
        ),
        log_every: c.changeable(
            "log_every",
            &saved.log_every,
            &now.log_every,
            u64::to_string,
        ),
        val_limit: c.changeable("val_limit", &saved.val_limit, &now.val_limit, |v| {
            v.map_or("all".into(), |v| v.to_string())
        }),
        final_ten_crop: !c.changeable(
            "no_ten_crop",
            &!saved.final_ten_crop,
            &!now.final_ten_crop,
            bool::to_string,
        ),
        precision: c.changeable("precision", &saved.precision, &now.precision, flag_value),
        channels_last: c.changeable(
            "channels_last",
            &saved.channels_last,
            &now.channels_last,
            flag_value,
        ),
        copy_stream: c.changeable(
            "copy_stream",
            &saved.copy_stream,
            &now.copy_stream,
            flag_value,
        ),
        keep_epochs: c.changeable(
            "keep",
            &saved.keep_epochs,
            &now.keep_epochs,
            usize::to_string,
        ),
        data: saved.data.clone().or_else(|| Some(inv.data.clone())),
        ..saved
    };
    if c.given.has("loss_scale") {
        c.changes.push(
            "--loss-scale is not applied: a resumed run continues the checkpoint's loss scale"
                .into(),
        );
    }
    if !c.conflicts.is_empty() {
        bail!(
            "a resumed run keeps the settings of the run it continues; these differ: {}. Drop \
             them to continue, or start a new run with --force",
            c.conflicts.join("; ")
        );
    }
    if !c.changes.is_empty() {
        eprintln!(
            "resuming at step {} with changed settings: {}",
            meta.step,
            c.changes.join("; ")
        );
    }
    Ok(resumed)
}
