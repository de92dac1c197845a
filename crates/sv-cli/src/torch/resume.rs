//! `train --resume`: the settings a resumed run continues with, from its checkpoint
//! and the flags typed now.
//!
//! A checkpoint's run continues exactly as it would have without the interruption, so:
//! - its labels must be the training set's (same wnids, same order) and its data the
//!   same (the set's manifest checksum and image side);
//! - settings that define the run (its [`RunSpec`]: model, init, input scale, batch
//!   size, learning rate, momentum, weight decay, schedule, seed, lighting, reflections,
//!   loader; and the statistics and mean image) are the checkpoint's. The typed flags
//!   make the spec this invocation asks for ([`asked_spec`]); sv-train's
//!   [`RunSpec::refused_changes`], the one rule the trainer applies too, says which
//!   differences are refused, each named here by its flag, the checkpoint's value and
//!   the one given;
//! - settings that can change between invocations (epochs, max steps, intervals,
//!   validation limit, final ten-crop, precision, channels-last, copy stream) are the
//!   checkpoint's unless typed; a typed change applies and is reported.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sv_shard::Dataset;
use sv_train::checkpoint::{CheckpointHeader, MEAN_IMAGE_TENSOR};
use sv_train::config::{RunSpec, SpecChange, schedule_kind};
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

/// Schedule flags typed for a kind of schedule the checkpoint's run does not use.
fn misplaced_schedule_flags(c: &mut Compare<'_>, saved: &ScheduleConfig) {
    let kind = schedule_kind(saved);
    let unused: &[&str] = match saved {
        ScheduleConfig::Plateau { .. } => &["step_every"],
        ScheduleConfig::Step { .. } => &["patience", "threshold"],
        ScheduleConfig::Constant => &[
            "patience",
            "threshold",
            "lr_divisor",
            "max_drops",
            "step_every",
        ],
    };
    for id in unused {
        c.misplaced(id, format!("the checkpoint's run uses the {kind} schedule"));
    }
}

/// The schedule this invocation asks for: another kind if `--schedule` names one,
/// else the checkpoint's with each typed parameter in place.
fn asked_schedule(saved: &ScheduleConfig, now: &ScheduleConfig, g: &Given) -> ScheduleConfig {
    if g.has("schedule") && schedule_kind(saved) != schedule_kind(now) {
        return now.clone();
    }
    let mut s = saved.clone();
    match (&mut s, now) {
        (
            ScheduleConfig::Plateau {
                patience,
                threshold,
                factor,
                max_drops,
                ..
            },
            ScheduleConfig::Plateau {
                patience: p,
                threshold: t,
                factor: f,
                max_drops: d,
                ..
            },
        ) => {
            set(g, "patience", patience, p);
            set(g, "threshold", threshold, t);
            set(g, "lr_divisor", factor, f);
            set(g, "max_drops", max_drops, d);
        }
        (
            ScheduleConfig::Step {
                every,
                factor,
                max_drops,
            },
            ScheduleConfig::Step {
                every: e,
                factor: f,
                max_drops: d,
            },
        ) => {
            set(g, "step_every", every, e);
            set(g, "lr_divisor", factor, f);
            set(g, "max_drops", max_drops, d);
        }
        // the flags' schedule is of the other kind (a default): its parameters, typed,
        // are taken where the checkpoint's kind has them
        (
            ScheduleConfig::Plateau {
                factor, max_drops, ..
            }
            | ScheduleConfig::Step {
                factor, max_drops, ..
            },
            ScheduleConfig::Plateau {
                factor: f,
                max_drops: d,
                ..
            }
            | ScheduleConfig::Step {
                factor: f,
                max_drops: d,
                ..
            },
        ) => {
            set(g, "lr_divisor", factor, f);
            set(g, "max_drops", max_drops, d);
        }
        _ => {}
    }
    s
}

/// `*slot = *now` if the flag `id` was typed.
fn set<T: Clone>(g: &Given, id: &str, slot: &mut T, now: &T) {
    if g.has(id) {
        *slot = now.clone();
    }
}

/// What this invocation asks the run to be: the checkpoint's spec with the value of
/// every typed flag in its place. The checkpoint's init and input scale are its
/// model's resolved ones, so typing the value it already uses is no change.
fn asked_spec(
    saved: &RunSpec,
    inv: &Invocation<'_>,
    header: &CheckpointHeader,
) -> (RunSpec, RunSpec) {
    let g = inv.given;
    let now = &inv.config;
    let mut saved = saved.clone();
    saved.init = Some(header.meta.model.init);
    saved.input_scale = Some(header.meta.model.input_scale);
    let mut s = saved.clone();
    set(g, "model", &mut s.model, &now.model);
    if g.has("init") {
        s.init = now.init;
    }
    if g.has("input_scale") {
        s.input_scale = now.input_scale;
    }
    set(g, "batch_size", &mut s.batch_size, &now.batch_size);
    set(g, "lr", &mut s.lr, &now.lr);
    set(g, "momentum", &mut s.sgd.momentum, &now.sgd.momentum);
    set(
        g,
        "weight_decay",
        &mut s.sgd.weight_decay,
        &now.sgd.weight_decay,
    );
    set(
        g,
        "bias_decay",
        &mut s.sgd.decay_biases,
        &now.sgd.decay_biases,
    );
    set(g, "seed", &mut s.seed, &now.seed);
    s.schedule = asked_schedule(&saved.schedule, &now.schedule, g);
    if let Some(d) = &mut s.data {
        let n = &inv.data;
        set(g, "no_mirror", &mut d.mirror, &n.mirror);
        set(g, "loader", &mut d.loader, &n.loader);
        if g.has("lighting") {
            d.lighting = match (inv.args.lighting.convention(), d.lighting) {
                (None, _) => None,
                (Some(c), Some(l)) => Some(Lighting { convention: c, ..l }),
                (Some(_), None) => n.lighting,
            };
        }
        // --stats: the lighting's numbers, where both runs have lighting
        if g.has("stats")
            && let (Some(l), Some(nl)) = (&mut d.lighting, &n.lighting)
        {
            (l.eigval, l.eigvec, l.std) = (nl.eigval, nl.eigvec, nl.std);
        }
    }
    (saved, s)
}

/// A refused change named by the flag that asked for it, with both values as the
/// flag writes them: `--momentum 0.5 (the checkpoint's run: 0.9)`.
fn as_flag(change: &SpecChange) -> String {
    let same = |v: &str| v.to_string();
    let (flag, show): (&str, &dyn Fn(&str) -> String) = match change.setting {
        "model" => ("--model", &same),
        "init" => ("--init", &same),
        "input_scale" => ("--input-scale", &same),
        "batch_size" => ("--batch-size", &same),
        "lr" => ("--lr", &same),
        "sgd.momentum" => ("--momentum", &same),
        "sgd.weight_decay" => ("--weight-decay", &same),
        "sgd.decay_biases" => ("--bias-decay", &same),
        "seed" => ("--seed", &same),
        "schedule" => ("--schedule", &same),
        "schedule.patience" => ("--patience", &same),
        "schedule.threshold" => ("--threshold", &same),
        "schedule.max_drops" => ("--max-drops", &same),
        "schedule.every" => ("--step-every", &same),
        // the schedule keeps the factor, the flag its inverse
        "schedule.factor" => ("--lr-divisor", &|v: &str| {
            v.parse::<f64>()
                .map_or(v.to_string(), |f| (1.0 / f).to_string())
        }),
        // the spec keeps whether to mirror, the flag whether not to
        "data.mirror" => ("--no-mirror", &|v: &str| match v {
            "true" => "false".into(),
            "false" => "true".into(),
            v => v.into(),
        }),
        "data.loader" => ("--loader", &same),
        "data.lighting" => ("--lighting", &same),
        "data.lighting.eigval" => ("--stats", &|v: &str| format!("lighting eigenvalues {v}")),
        "data.lighting.eigvec" => ("--stats", &|v: &str| format!("lighting eigenvectors {v}")),
        other => (other, &same),
    };
    format!(
        "{flag} {} (the checkpoint's run: {})",
        show(&change.now),
        show(&change.saved)
    )
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
        // mirror, loader, lighting: compared with the rest of the spec
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
    let mut c = Compare {
        given: inv.given,
        conflicts: Vec::new(),
        changes: Vec::new(),
    };
    let (saved_spec, asked) = asked_spec(&saved.spec(), inv, header);
    c.conflicts
        .extend(saved_spec.refused_changes(&asked).iter().map(as_flag));
    misplaced_schedule_flags(&mut c, &saved.schedule);
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
