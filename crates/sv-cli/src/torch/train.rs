//! `supervision train`: AlexNet on a train shard set, validating on a val shard set
//! each epoch, with the paper's update rule and schedule, checkpoints and metrics in
//! `--out`. `--synthetic-data N` instead measures the compute-only ceiling: N steps on
//! one batch already on the device (no pipeline).
//!
//! The flags are `sv_cli::cli_args::TrainArgs`; [`super::settings`] makes them into
//! typed settings, [`super::outdir`] decides how the run starts from its folder, and
//! [`run`] calls the steps in order.

use anyhow::{Context, Result, bail};
use sv_cli::cli_args::train::Loader;
use sv_cli::cli_args::{Given, TrainArgs};
use sv_train::Device;
use sv_train::data::{AugmentConfig, PipelineSource, ShardSource};
use sv_train::input::Normalization;
use sv_train::metrics::{MetricsRecord, TENSORBOARD_DIR};
use sv_train::model::ModelSpec;
use sv_train::sv_dist::RankEnv;
use sv_train::sv_pipeline;
use sv_train::trainer::{
    BEST_CHECKPOINT, Event, LAST_CHECKPOINT, METRICS_FILE, TrainConfig, TrainData, TrainOutcome,
    Trainer,
};

use super::dist::{self, Role};
use super::outdir::prepare_out;
use super::settings::{Inputs, TrainSettings, flag_config};

pub fn run(args: TrainArgs, given: &Given) -> Result<i32> {
    let (device, job) = match Role::resolve(&args.dist)? {
        Role::Parent(n) => return dist::run_local_ranks(n, &args.dist, &args.device),
        Role::Single => (sv_train::parse_device(&args.device)?, None),
        Role::Rank(env) => (dist::rank_device(&env, &args.device)?, Some(env)),
    };
    // rank 0 speaks for the job and alone touches the output folder
    let lead = job.as_ref().is_none_or(|e| e.rank == 0);
    let config = flag_config(&args)?;
    if let Some(steps) = args.synthetic_data {
        return ceiling(&args, config, device, steps, job.as_ref());
    }
    // SIGTERM, SIGINT, SIGUSR1: finish the step, write last.safetensors, exit 75
    sv_train::stop::install()?;
    let inputs = Inputs::open(&args)?;
    let resume_from = prepare_out(&args, lead)?;
    if lead && resume_from.is_none() && args.stats.is_none() {
        tracing::warn!("no --stats: ImageNet's usual mean/std, no PCA lighting");
    }
    let settings = TrainSettings::resolve(&args, given, config, &inputs, resume_from)?;
    let mut trainer = start_trainer(&settings, &inputs, device, &args)?;
    let mut source = data_source(&settings, &trainer, &inputs, job.as_ref())?;
    if let Some(env) = &job {
        let coll = dist::join(env, device, &args.dist)?;
        trainer
            .distribute(coll, dist::parallel(&args.dist))
            .with_context(|| format!("rank {} of {}", env.rank, env.world_size))?;
    }
    if lead {
        announce(&trainer, &inputs, source.batches_per_epoch(), device);
    }
    let outcome = train(&mut trainer, source.as_mut(), &inputs, lead)?;
    let code = match outcome.stopped {
        Some(_) => sv_train::stop::STOPPED_EXIT_CODE,
        None => 0,
    };
    if lead {
        report(&args, &settings, &trainer, &outcome, device)?;
    }
    Ok(code)
}

/// A new trainer, or the checkpoint's run continued.
fn start_trainer(
    settings: &TrainSettings,
    inputs: &Inputs,
    device: Device,
    args: &TrainArgs,
) -> Result<Trainer> {
    let config = settings.config.clone();
    Ok(match &settings.resume_from {
        Some(last) => Trainer::resume(last, config, device, &args.out)
            .with_context(|| format!("resume from {}", last.display()))?,
        None => Trainer::new(
            config,
            inputs.train.classes().to_vec(),
            inputs.norm.clone(),
            device,
            &args.out,
        )?,
    })
}

/// The training batches: this rank's slice of every epoch, from the loader the run
/// uses.
fn data_source(
    settings: &TrainSettings,
    trainer: &Trainer,
    inputs: &Inputs,
    job: Option<&RankEnv>,
) -> Result<Box<dyn TrainData>> {
    let cfg = trainer.config();
    let data = settings.data()?;
    let crop = trainer.model().spec().input_side;
    let loader = settings.loader;
    Ok(match loader.kind {
        Loader::Simple if job.is_some_and(|e| e.world_size > 1) => {
            bail!("--loader simple reads the whole epoch on every rank; use --loader pipeline")
        }
        Loader::Simple => {
            let aug = AugmentConfig {
                crop: crop as usize,
                mirror: data.mirror,
                lighting: data.lighting,
            };
            Box::new(
                ShardSource::new(inputs.train.clone(), cfg.batch_size, cfg.seed, aug)?
                    .verify(loader.verify),
            )
        }
        Loader::Pipeline => {
            let config = sv_pipeline::LoaderConfig {
                batch_size: cfg.batch_size,
                seed: cfg.seed,
                workers: loader.workers,
                augment: sv_pipeline::Augment::Train {
                    crop: crop as u32,
                    flip: data.mirror,
                    lighting: data.lighting,
                },
                verify: loader.verify,
                release_pages: loader.release_pages,
                rank: job.map_or(0, |e| e.rank),
                world_size: job.map_or(1, |e| e.world_size),
                ..Default::default()
            };
            Box::new(PipelineSource::new(inputs.train.clone(), config)?)
        }
    })
}

/// The line that says what is trained where, from which step.
fn announce(trainer: &Trainer, inputs: &Inputs, bpe: u64, device: Device) {
    let spec = trainer.model().spec();
    let cfg = trainer.config();
    let world = trainer.world_size();
    let ranks = if world > 1 {
        format!(", {world} ranks: global batch {}", cfg.batch_size * world)
    } else {
        String::new()
    };
    eprintln!(
        "training {} ({} parameters) on {}, {}{}, input {}: {} images, {bpe} steps/epoch, batch {}{ranks}, from step {}",
        spec.name,
        trainer.model().param_count(),
        device_name(device),
        cfg.precision_on(device).as_str(),
        if cfg.channels_last_on(device) {
            ", channels-last"
        } else {
            ""
        },
        spec.input_scale.as_str(),
        inputs.train.len(),
        cfg.batch_size,
        trainer.step()
    );
}

/// The training loop with its progress bar (rank 0's; the others' is hidden), until
/// the run ends or a signal stops it; then the job's end.
fn train(
    trainer: &mut Trainer,
    source: &mut dyn TrainData,
    inputs: &Inputs,
    lead: bool,
) -> Result<TrainOutcome> {
    let cfg = trainer.config();
    let bpe = source.batches_per_epoch();
    let total_steps = cfg.max_steps.unwrap_or(u64::MAX).min(bpe * cfg.epochs);
    let pb = if lead {
        sv_cli::progress::bar("train", total_steps, "steps")
    } else {
        sv_cli::progress::hidden("train")
    };
    pb.set_position(trainer.step());
    pb.reset_eta();
    let mut clock = std::time::Instant::now(); // since the last epoch line
    let outcome = trainer.run(source, inputs.val.as_ref(), &mut |e| match e {
        Event::Step { step, .. } => pb.set_position(step),
        Event::Record(r @ MetricsRecord::Train { .. }) => pb.status(r.to_string()),
        Event::Record(r) => {
            pb.println(format!("{r} ({:.1} s)", clock.elapsed().as_secs_f64()));
            clock = std::time::Instant::now();
        }
        Event::EvalStart { total } => pb.status(format!("validating on {total} images")),
        Event::Stopping(s) if lead => pb.println(format!(
            "{}: stopping after step {}, writing {LAST_CHECKPOINT}; continue with --resume",
            s.signal
                .map_or("another rank was signalled", sv_train::stop::signal_name),
            s.step
        )),
        _ => {}
    });
    let (rank, world) = (trainer.rank(), trainer.world_size());
    let in_job = |e: sv_train::TrainError| {
        let e = anyhow::Error::from(e);
        if world > 1 {
            e.context(format!("rank {rank} of {world}"))
        } else {
            e
        }
    };
    let outcome = outcome.map_err(in_job)?;
    trainer.finish_job().map_err(in_job)?;
    pb.finish_and_clear();
    Ok(outcome)
}

/// The final summary on stdout (JSON with `--json`).
fn report(
    args: &TrainArgs,
    settings: &TrainSettings,
    trainer: &Trainer,
    outcome: &TrainOutcome,
    device: Device,
) -> Result<()> {
    let spec = trainer.model().spec();
    let cfg = trainer.config();
    let world = trainer.world_size();
    // a new run stopped before its first checkpoint has none to name
    let checkpoint = Some(outcome.checkpoint.clone()).filter(|p| p.exists());
    let summary = serde_json::json!({
        "model": spec.name,
        "steps": outcome.steps,
        "epochs_done": outcome.epochs_done,
        "images_per_s": outcome.images_per_s,
        "data_wait_share": outcome.data_wait_share,
        "val_top1_err": outcome.last_val.map(|r| r.top1_err),
        "val_top5_err": outcome.last_val.map(|r| r.top5_err),
        "final_eval": outcome.final_eval.map(|(m, r)| serde_json::json!({
            "mode": m.as_str(), "images": r.images, "top1_err": r.top1_err, "top5_err": r.top5_err})),
        "checkpoint": checkpoint,
        "best_checkpoint": Some(args.out.join(BEST_CHECKPOINT)).filter(|p| p.exists()),
        "metrics": args.out.join(METRICS_FILE),
        "tensorboard": args.out.join(TENSORBOARD_DIR),
        "device": device_name(device),
        "precision": cfg.precision_on(device).as_str(),
        "channels_last": cfg.channels_last_on(device),
        "copy_stream": device.is_cuda() && cfg.copy_stream.unwrap_or(true),
        "input_scale": spec.input_scale.as_str(),
        "world_size": world,
        "global_batch": cfg.batch_size * world,
        "verified": settings.loader.verify,
    });
    if args.json {
        sv_cli::outln!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        sv_cli::outln!(
            "trained {} to step {} ({} epochs done): {:.1} images/s, data wait {:.2}% of step time",
            spec.name,
            outcome.steps,
            outcome.epochs_done,
            outcome.images_per_s,
            100.0 * outcome.data_wait_share
        );
        if let Some((m, r)) = outcome.final_eval {
            sv_cli::outln!(
                "final {} evaluation: top-1 error {:.2}%, top-5 error {:.2}%",
                m.as_str(),
                100.0 * r.top1_err,
                100.0 * r.top5_err
            );
        } else if let Some(r) = outcome.last_val {
            sv_cli::outln!(
                "last validation: top-1 error {:.2}%, top-5 error {:.2}%",
                100.0 * r.top1_err,
                100.0 * r.top5_err
            );
        }
        match &checkpoint {
            Some(p) => sv_cli::outln!("checkpoint: {}", p.display()),
            None => sv_cli::outln!("checkpoint: none written"),
        }
        sv_cli::outln!("metrics:    {}", args.out.join(METRICS_FILE).display());
        sv_cli::outln!(
            "tensorboard: {} (tensorboard --logdir {})",
            args.out.join(TENSORBOARD_DIR).display(),
            args.out.display()
        );
    }
    Ok(())
}

/// `cpu` or `cuda:N`, as `--device` takes it.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// The compute-only ceiling (`--synthetic-data N`).
fn ceiling(
    args: &TrainArgs,
    cfg: TrainConfig,
    device: sv_train::Device,
    steps: u64,
    job: Option<&RankEnv>,
) -> Result<i32> {
    let classes: Vec<_> = (0..args.synthetic_classes)
        .map(|i| sv_core::ClassInfo {
            wnid: format!("c{i}"),
            name: format!("class {i}"),
        })
        .collect();
    let spec = ModelSpec::by_name(&cfg.model, classes.len() as i64)?;
    let batch = cfg.batch_size;
    let precision = cfg.precision_on(device);
    let channels_last = cfg.channels_last_on(device);
    let mut t = Trainer::new(cfg, classes, Normalization::default(), device, &args.out)?;
    if let Some(env) = job {
        // every step then averages its gradients over NCCL, as in training
        t.distribute(
            dist::join(env, device, &args.dist)?,
            dist::parallel(&args.dist),
        )?;
    }
    let warmup = (steps / 10).clamp(1, 20);
    // the ranks step together: the job trains world x what one rank does
    let ips = sv_train::trainer::bench_compute(&mut t, steps, warmup)? * t.world_size() as f64;
    t.finish_job()?;
    if t.rank() != 0 {
        return Ok(0);
    }
    let v = serde_json::json!({
        "mode": "synthetic-data", "model": spec.name, "batch_size": batch, "steps": steps,
        "warmup_steps": warmup, "images_per_s": ips, "device": device_name(device),
        "precision": precision.as_str(), "channels_last": channels_last,
        "world_size": t.world_size(), "collective": if job.is_some() { "nccl" } else { "none" },
    });
    if args.json {
        sv_cli::outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        sv_cli::outln!(
            "compute-only ceiling: {} batch {batch} on {} ({}{}): {ips:.1} images/s over {steps} steps",
            spec.name,
            device_name(device),
            precision.as_str(),
            if channels_last { ", channels-last" } else { "" }
        );
    }
    Ok(0)
}
