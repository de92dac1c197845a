//! `supervision train`: AlexNet on a train shard set, validating on a val shard set
//! each epoch, with the paper's update rule and schedule, checkpoints and metrics in
//! `--out`. `--synthetic-data N` instead measures the compute-only ceiling: N steps on
//! one batch already on the device (no pipeline).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sv_shard::Dataset;
use sv_stats::{MeanImage, PcaStats};
use sv_train::data::{AugmentConfig, PipelineSource, ShardSource};
use sv_train::input::{InputScale, Normalization, PixelMean};
use sv_train::metrics::MetricsRecord;
use sv_train::model::{InitScheme, ModelSpec};
use sv_train::optim::SgdConfig;
use sv_train::params::Precision;
use sv_train::schedule::{PAPER_MAX_DROPS, ScheduleConfig};
use sv_train::sv_pipeline;
use sv_train::sv_pipeline::LightingConvention;
use sv_train::trainer::{
    BEST_CHECKPOINT, Event, LAST_CHECKPOINT, METRICS_FILE, TrainConfig, TrainData, Trainer,
};

/// Flags of `supervision train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training shard set.
    #[arg(long, required_unless_present = "synthetic_data")]
    pub train: Option<PathBuf>,
    /// Validation shard set (evaluated at each epoch end; drives the plateau schedule).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Statistics from `supervision pca compute` (mean/std, PCA lighting). Without it,
    /// ImageNet's usual mean/std and no lighting.
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Subtract this per-pixel mean image (the paper's "mean activity over the
    /// training set", Caffe's compute_image_mean), at each crop pixel's position,
    /// instead of the per-channel mean: the `.npy` that `pca compute --mean-image`
    /// writes, 3 x side x side for the training shards' side. Kept in the checkpoint,
    /// so eval, predict and --resume use it too.
    #[arg(long, value_name = "FILE.npy")]
    pub mean_image: Option<PathBuf>,
    /// Output directory: metrics.jsonl, last.safetensors, best.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// alexnet, alexnet-owt, alexnet-tiny, alexnet-owt-tiny.
    #[arg(long, default_value = "alexnet")]
    pub model: String,
    /// Weight init: paper (N(0, 0.01^2), the paper's biases), torch (PyTorch's
    /// default), kaiming (He et al.). Default: the model's own (alexnet: paper;
    /// alexnet-owt: torch; the tiny models: kaiming).
    #[arg(long, value_name = "paper|torch|kaiming")]
    pub init: Option<String>,
    /// Input values: `raw` = 0-255 minus the mean (image), nothing else (the paper,
    /// section 2); `std` = also divided by the channel std of --stats (torchvision's
    /// recipe). Default: the model's own (alexnet: raw; alexnet-owt and the tiny
    /// models: std). Kept in the checkpoint for eval, predict and --resume.
    #[arg(long, value_name = "raw|std")]
    pub input_scale: Option<String>,
    /// Epochs in total (a resumed run counts the epochs already done).
    #[arg(long, default_value_t = 90)]
    pub epochs: u64,
    /// Stop after this many steps in total (writes a checkpoint).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Initial learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 0.0005)]
    pub weight_decay: f64,
    /// Apply weight decay to biases too. true: the paper's update rule decays every
    /// parameter w; false: only weights, as Caffe's reference bvlc_alexnet
    /// (decay_mult: 0 on biases).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub bias_decay: bool,
    /// plateau (divide when the val error stops improving), step, constant.
    #[arg(long, default_value = "plateau")]
    pub schedule: String,
    /// Plateau: evaluations without improvement before dividing (4 keeps a noisy
    /// --val-limit subset from cutting the rate early; see the README).
    #[arg(long, default_value_t = ScheduleConfig::PAPER_PATIENCE)]
    pub patience: u32,
    /// Plateau: decrease of the top-1 error (fraction) that counts as improvement.
    #[arg(long, default_value_t = ScheduleConfig::PAPER_THRESHOLD)]
    pub threshold: f64,
    /// Plateau and step: divide at most this many times (the paper: 3).
    #[arg(long, default_value_t = PAPER_MAX_DROPS)]
    pub max_drops: u32,
    /// Step: divide every N epochs.
    #[arg(long, default_value_t = 30)]
    pub step_every: u32,
    /// Divisor of the rate at each drop.
    #[arg(long, default_value_t = 10.0)]
    pub lr_divisor: f64,
    /// Seed for init, data order, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Number type of the forward and backward passes: bf16, fp16 (with dynamic loss
    /// scaling) or fp32. Master weights, momentum, LRN, softmax and loss stay fp32.
    /// Default: bf16 on CUDA, fp32 on the CPU.
    #[arg(long, value_name = "bf16|fp16|fp32")]
    pub precision: Option<String>,
    /// Channels-last (NHWC) input and convolutions: the uint8 batch is already NHWC,
    /// so it goes to the convolutions without a transpose. Default: true on CUDA,
    /// false on the CPU.
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub channels_last: Option<bool>,
    /// Copy each batch to a CUDA device on a side stream that overlaps the previous
    /// step (sv-c10); false copies on the compute stream, between steps.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub copy_stream: bool,
    /// fp16: initial loss scale (halved on overflow, doubled after 2000 good steps).
    #[arg(long, default_value_t = 65536.0)]
    pub loss_scale: f64,
    /// Continue from OUT/last.safetensors (run-length flags apply; the rest is restored).
    #[arg(long)]
    pub resume: bool,
    /// Checkpoint every N steps (0: at epoch ends only).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: u64,
    /// Steps per metrics line.
    #[arg(long, default_value_t = 20)]
    pub log_every: u64,
    /// Validate each epoch on at most N images.
    #[arg(long)]
    pub val_limit: Option<usize>,
    /// Final evaluation on the centre crop only (default: ten-crop).
    #[arg(long)]
    pub no_ten_crop: bool,
    /// PCA lighting: paper, cuda-convnet2, none.
    #[arg(long, default_value = "paper")]
    pub lighting: String,
    /// No random reflections.
    #[arg(long)]
    pub no_mirror: bool,
    /// Data loader: `pipeline` (sv-pipeline, worker threads) or `simple` (one
    /// thread, the reference).
    #[arg(long, default_value = "pipeline")]
    pub loader: String,
    /// Pipeline worker threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Pipeline: unmap each training record's pages once used, so resident memory
    /// stays independent of the dataset size (costs page faults on raw records; see
    /// `bench pipeline --release-pages`).
    #[arg(long)]
    pub release_pages: bool,
    /// Measure the compute-only ceiling: N timed steps on one synthetic batch already
    /// on the device, then exit (no data, no checkpoint).
    #[arg(long, value_name = "STEPS")]
    pub synthetic_data: Option<u64>,
    /// Classes of the synthetic ceiling run.
    #[arg(long, default_value_t = 1000)]
    pub synthetic_classes: usize,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn schedule(args: &Args) -> Result<ScheduleConfig> {
    if args.lr_divisor <= 1.0 {
        bail!("--lr-divisor must be above 1, got {}", args.lr_divisor);
    }
    let factor = 1.0 / args.lr_divisor;
    Ok(match args.schedule.as_str() {
        "plateau" => ScheduleConfig::Plateau {
            patience: args.patience,
            threshold: args.threshold,
            factor,
            min_lr: 1e-7,
            max_drops: args.max_drops,
        },
        "step" => ScheduleConfig::Step {
            every: args.step_every,
            factor,
            max_drops: args.max_drops,
        },
        "constant" => ScheduleConfig::Constant,
        s => bail!("unknown --schedule {s} (plateau, step, constant)"),
    })
}

fn config(args: &Args) -> Result<TrainConfig> {
    Ok(TrainConfig {
        model: args.model.clone(),
        init: args
            .init
            .as_deref()
            .map(str::parse::<InitScheme>)
            .transpose()?,
        input_scale: args
            .input_scale
            .as_deref()
            .map(str::parse::<InputScale>)
            .transpose()?,
        batch_size: args.batch_size,
        epochs: args.epochs,
        max_steps: args.max_steps,
        lr: args.lr,
        schedule: schedule(args)?,
        sgd: SgdConfig {
            momentum: args.momentum,
            weight_decay: args.weight_decay,
            decay_biases: args.bias_decay,
        },
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        log_every: args.log_every.max(1),
        val_limit: args.val_limit,
        final_ten_crop: !args.no_ten_crop,
        prefetch_depth: 1,
        precision: args
            .precision
            .as_deref()
            .map(str::parse::<Precision>)
            .transpose()?,
        channels_last: args.channels_last,
        loss_scale: Some(args.loss_scale),
        copy_stream: Some(args.copy_stream),
    })
}

/// Normalisation statistics and the PCA lighting (one type for both loaders).
fn stats(args: &Args) -> Result<(Normalization, Option<sv_pipeline::Lighting>)> {
    let Some(path) = &args.stats else {
        tracing::warn!("no --stats: ImageNet's usual mean/std, no PCA lighting");
        return Ok((Normalization::default(), None));
    };
    let s = PcaStats::load(path).with_context(|| format!("read statistics {}", path.display()))?;
    let norm = Normalization {
        mean: s.scale_255.mean,
        std: s.scale_255.std,
        mean_image: None,
    };
    let convention = match args.lighting.as_str() {
        "none" => return Ok((norm, None)),
        "paper" => LightingConvention::Paper,
        "cuda-convnet2" => LightingConvention::CudaConvnet2,
        l => bail!("unknown --lighting {l} (paper, cuda-convnet2, none)"),
    };
    Ok((norm, Some(s.lighting(convention))))
}

pub fn run(args: Args) -> Result<i32> {
    let device = sv_train::parse_device(&args.device)?;
    let cfg = config(&args)?;
    if let Some(steps) = args.synthetic_data {
        return ceiling(&args, cfg, device, steps);
    }
    let train_dir = args.train.as_ref().context("--train is required")?;
    let train = Arc::new(
        Dataset::open(train_dir).with_context(|| format!("open {}", train_dir.display()))?,
    );
    let val = match &args.val {
        Some(v) => Some(Dataset::open(v).with_context(|| format!("open {}", v.display()))?),
        None => None,
    };
    let (mut norm, lighting) = stats(&args)?;
    if let Some(path) = &args.mean_image {
        let m = MeanImage::load_npy(path)
            .with_context(|| format!("read the mean image {}", path.display()))?;
        let side = train.geometry().side;
        if m.side != side {
            bail!(
                "{} is a {s}x{s} mean image but {} holds {side}x{side} images",
                path.display(),
                train_dir.display(),
                s = m.side
            );
        }
        norm.mean_image = Some(
            PixelMean::new(m.side, m.data)
                .with_context(|| format!("the mean image {}", path.display()))?,
        );
    }
    let last = args.out.join(LAST_CHECKPOINT);
    let mut trainer = if args.resume && last.exists() {
        if args.mean_image.is_some() {
            eprintln!(
                "resuming: --mean-image is ignored, the normalisation saved in {} applies",
                last.display()
            );
        }
        Trainer::resume(&last, cfg, device, &args.out)
            .with_context(|| format!("resume from {}", last.display()))?
    } else {
        if args.resume {
            eprintln!("no {} yet: starting a new run", last.display());
        }
        Trainer::new(cfg, train.classes().to_vec(), norm, device, &args.out)?
    };
    let spec = trainer.model().spec().clone();
    if spec.classes != train.classes().len() as i64 {
        bail!(
            "{} has {} classes, the model {}",
            train_dir.display(),
            train.classes().len(),
            spec.classes
        );
    }
    let cfg = trainer.config().clone();
    let mut source: Box<dyn TrainData> = match args.loader.as_str() {
        "pipeline" => {
            let config = sv_pipeline::LoaderConfig {
                batch_size: cfg.batch_size,
                seed: cfg.seed,
                workers: args.workers.unwrap_or_else(num_cpus::get).max(1),
                augment: sv_pipeline::Augment::Train {
                    crop: spec.input_side as u32,
                    flip: !args.no_mirror,
                    lighting,
                },
                release_pages: args.release_pages,
                ..Default::default()
            };
            Box::new(PipelineSource::new(train.clone(), config)?)
        }
        "simple" => {
            let aug = AugmentConfig {
                crop: spec.input_side as usize,
                mirror: !args.no_mirror,
                lighting,
            };
            Box::new(ShardSource::new(
                train.clone(),
                cfg.batch_size,
                cfg.seed,
                aug,
            )?)
        }
        l => bail!("unknown --loader {l} (pipeline, simple)"),
    };
    let bpe = source.batches_per_epoch();
    let total_steps = cfg.max_steps.unwrap_or(u64::MAX).min(bpe * cfg.epochs);
    eprintln!(
        "training {} ({} parameters) on {device:?}, {}{}, input {}: {} images, {bpe} steps/epoch, batch {}, from step {}",
        spec.name,
        trainer.model().param_count(),
        cfg.precision_on(device).as_str(),
        if cfg.channels_last_on(device) {
            ", channels-last"
        } else {
            ""
        },
        spec.input_scale.as_str(),
        train.len(),
        cfg.batch_size,
        trainer.step()
    );
    let pb = sv_cli::progress::bar(total_steps, "steps");
    pb.set_position(trainer.step());
    let outcome = trainer.run(source.as_mut(), val.as_ref(), &mut |e| match e {
        Event::Step { step, .. } => pb.set_position(step),
        Event::Record(MetricsRecord::Train {
            loss,
            images_per_s,
            data_wait_share,
            lr,
            epoch,
            ..
        }) => pb.set_message(format!(
            "epoch {epoch} loss {loss:.3} lr {lr:.0e} {images_per_s:.0} img/s wait {:.1}%",
            100.0 * data_wait_share
        )),
        Event::Record(r @ MetricsRecord::Epoch { .. }) => {
            pb.println(serde_json::to_string(r).unwrap_or_default())
        }
        Event::EvalStart { total } => pb.set_message(format!("validating on {total} images")),
        _ => {}
    })?;
    pb.finish_and_clear();
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
        "checkpoint": outcome.checkpoint,
        "best_checkpoint": Some(args.out.join(BEST_CHECKPOINT)).filter(|p| p.exists()),
        "metrics": args.out.join(METRICS_FILE),
        "device": format!("{device:?}"),
        "precision": cfg.precision_on(device).as_str(),
        "channels_last": cfg.channels_last_on(device),
        "copy_stream": device.is_cuda() && args.copy_stream,
        "input_scale": spec.input_scale.as_str(),
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
        sv_cli::outln!("checkpoint: {}", outcome.checkpoint.display());
        sv_cli::outln!("metrics:    {}", args.out.join(METRICS_FILE).display());
    }
    Ok(0)
}

fn ceiling(args: &Args, cfg: TrainConfig, device: sv_train::Device, steps: u64) -> Result<i32> {
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
    let warmup = (steps / 10).clamp(1, 20);
    let ips = t.bench_compute(steps, warmup)?;
    let v = serde_json::json!({
        "mode": "synthetic-data", "model": spec.name, "batch_size": batch, "steps": steps,
        "warmup_steps": warmup, "images_per_s": ips, "device": format!("{device:?}"),
        "precision": precision.as_str(), "channels_last": channels_last,
    });
    if args.json {
        sv_cli::outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        sv_cli::outln!(
            "compute-only ceiling: {} batch {batch} on {device:?} ({}{}): {ips:.1} images/s over {steps} steps",
            spec.name,
            precision.as_str(),
            if channels_last { ", channels-last" } else { "" }
        );
    }
    Ok(0)
}
