//! `supervision train`: AlexNet on a train shard set, validating on a val shard set
//! each epoch, with the paper's update rule and schedule, checkpoints and metrics in
//! `--out`. `--synthetic-data N` instead measures the compute-only ceiling: N steps on
//! one batch already on the device (no pipeline).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use sv_cli::args::{MAX_BATCH_SIZE, MAX_CLASSES, MAX_WORKERS, at_least_one, count_up_to};
use sv_cli::cli_args::numbers::{
    Falls, above_one_f32, check_f32, fraction, fraction_f32, non_negative_f32, positive_f32,
};
use sv_shard::Dataset;
use sv_stats::{MeanImage, PcaStats};
use sv_train::checkpoint;
use sv_train::data::{AugmentConfig, DataSettings, PipelineSource, ShardSource};
use sv_train::input::{InputScale, Normalization, PixelMean};
use sv_train::metrics::{MetricsRecord, TENSORBOARD_DIR};
use sv_train::model::{InitScheme, ModelSpec};
use sv_train::optim::SgdConfig;
use sv_train::params::Precision;
use sv_train::schedule::{PAPER_MAX_DROPS, ScheduleConfig};
use sv_train::sv_dist::RankEnv;
use sv_train::sv_pipeline;
use sv_train::sv_pipeline::LightingConvention;
use sv_train::trainer::{
    BEST_CHECKPOINT, Event, LAST_CHECKPOINT, METRICS_FILE, TrainConfig, TrainData, Trainer,
};

use super::dist::{self, Role};

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
    /// Output directory: metrics.jsonl, tensorboard/ (event files for `tensorboard
    /// --logdir OUT`), last.safetensors, best.safetensors, epoch-NNNN.safetensors (--keep).
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
    #[arg(long, default_value_t = 90, allow_negative_numbers = true, value_parser = at_least_one::<u64>)]
    pub epochs: u64,
    /// Stop after this many steps in total (writes a checkpoint).
    #[arg(long, allow_negative_numbers = true, value_parser = at_least_one::<u64>)]
    pub max_steps: Option<u64>,
    /// Images per step on each rank (per GPU, as PyTorch DDP): with N ranks a step
    /// trains on a global batch of N x this, and --lr applies to that global batch.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = count_up_to(MAX_BATCH_SIZE))]
    pub batch_size: usize,
    /// Initial learning rate (above 0, an f32).
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true, value_parser = positive_f32)]
    pub lr: f64,
    /// Momentum (0 or more, below 1).
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true, value_parser = fraction_f32)]
    pub momentum: f64,
    /// Weight decay (0 or more, an f32).
    #[arg(long, default_value_t = 0.0005, allow_negative_numbers = true, value_parser = non_negative_f32)]
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
    #[arg(long, default_value_t = ScheduleConfig::PAPER_PATIENCE, allow_negative_numbers = true)]
    pub patience: u32,
    /// Plateau: decrease of the top-1 error (fraction, 0 or more, below 1) that counts
    /// as improvement.
    #[arg(long, default_value_t = ScheduleConfig::PAPER_THRESHOLD, allow_negative_numbers = true, value_parser = fraction)]
    pub threshold: f64,
    /// Plateau and step: divide at most this many times (the paper: 3).
    #[arg(long, default_value_t = PAPER_MAX_DROPS, allow_negative_numbers = true)]
    pub max_drops: u32,
    /// Step: divide every N epochs.
    #[arg(long, default_value_t = 30, allow_negative_numbers = true, value_parser = at_least_one::<u32>)]
    pub step_every: u32,
    /// Divisor of the rate at each drop (above 1).
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true, value_parser = above_one_f32)]
    pub lr_divisor: f64,
    /// Seed for init, data order, augmentation and dropout.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
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
    #[arg(long, default_value_t = 65536.0, allow_negative_numbers = true, value_parser = positive_f32)]
    pub loss_scale: f64,
    /// Continue the run in --out from its last.safetensors. Settings not given are the
    /// checkpoint's; given ones that a run cannot change (model, batch size, rates,
    /// schedule, seed, data and augmentation) must agree with it; run length,
    /// intervals, precision and layout may change, and the change is reported.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Start a new run in an --out folder that holds one: first delete that run's
    /// files (last.safetensors, best.safetensors, metrics.jsonl and their temporary
    /// leftovers); nothing else in the folder is touched.
    #[arg(long)]
    pub force: bool,
    /// Checkpoint every N steps (0: at epoch ends only).
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    pub checkpoint_every: u64,
    /// Steps per metrics line.
    #[arg(long, default_value_t = 20, allow_negative_numbers = true, value_parser = at_least_one::<u64>)]
    pub log_every: u64,
    /// Validate each epoch on at most N images.
    #[arg(long, allow_negative_numbers = true, value_parser = at_least_one::<usize>)]
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
    #[arg(long, allow_negative_numbers = true, value_parser = count_up_to(MAX_WORKERS))]
    pub workers: Option<usize>,
    /// Do not check each training record's CRC-32 as it is read (checked by default:
    /// a damaged record stops training naming its shard and record; the cost is in
    /// the README). Validation records are always checked.
    #[arg(long)]
    pub no_verify: bool,
    /// Pipeline: unmap each training record's pages once used, so resident memory
    /// stays independent of the dataset size (costs page faults on raw records; see
    /// `bench pipeline --release-pages`).
    #[arg(long)]
    pub release_pages: bool,
    /// Measure the compute-only ceiling: N timed steps on one synthetic batch already
    /// on the device, then exit (no data, no checkpoint).
    #[arg(long, value_name = "STEPS", allow_negative_numbers = true, value_parser = at_least_one::<u64>)]
    pub synthetic_data: Option<u64>,
    /// Classes of the synthetic ceiling run.
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true, value_parser = count_up_to(MAX_CLASSES))]
    pub synthetic_classes: usize,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Keep the checkpoints of the last N epochs as OUT/epoch-NNNN.safetensors (NNNN:
    /// epochs done), besides last.safetensors and best.safetensors; older ones are
    /// deleted once the new one is in place (timm's --checkpoint-hist). 0: none.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep: usize,
    /// Data-parallel training: --nproc-per-node, --collective, timeouts (torch/dist.rs).
    #[command(flatten)]
    pub dist: super::dist::DistArgs,
}

/// The flags typed on the command line (defaults are not): a resumed run compares
/// those with its checkpoint and takes the checkpoint's for the rest.
#[derive(Debug, Default)]
pub struct Given(BTreeSet<String>);

impl Given {
    /// The typed flags of `train`'s matches, by argument id (`batch_size`).
    pub fn from_matches(m: &ArgMatches) -> Given {
        Given(
            m.ids()
                .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.as_str().to_string())
                .collect(),
        )
    }

    /// Whether the flag with argument id `id` was typed.
    pub fn has(&self, id: &str) -> bool {
        self.0.contains(id)
    }
}

fn schedule(args: &Args) -> Result<ScheduleConfig> {
    let factor = 1.0 / args.lr_divisor;
    Ok(match args.schedule.as_str() {
        "plateau" => ScheduleConfig::Plateau {
            patience: args.patience,
            threshold: args.threshold,
            factor,
            min_lr: sv_cli::cli_args::numbers::PLATEAU_MIN_LR,
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

/// How the rate of the run these flags describe can fall.
fn falls(args: &Args) -> Falls {
    match args.schedule.as_str() {
        "step" => Falls::Step {
            divisor: args.lr_divisor,
            drops: args.max_drops,
            every: args.step_every,
            epochs: args.epochs,
        },
        "constant" => Falls::Constant,
        _ => Falls::Plateau {
            divisor: args.lr_divisor,
            drops: args.max_drops,
        },
    }
}

fn config(args: &Args) -> Result<TrainConfig> {
    // the decay step and the lowest rate, as each flag is: f32 must hold them
    check_f32(args.lr, args.weight_decay, falls(args)).map_err(anyhow::Error::msg)?;
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
        log_every: args.log_every,
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
        dropout: None,
        data: None,
        keep_epochs: args.keep,
    })
}

/// Normalisation statistics and the PCA lighting (one type for both loaders).
fn stats(args: &Args) -> Result<(Normalization, Option<sv_pipeline::Lighting>)> {
    let Some(path) = &args.stats else {
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

/// `cpu` or `cuda:N`, as `--device` takes it.
pub fn device_name(device: sv_train::Device) -> String {
    match device {
        sv_train::Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// The files a run writes in its output folder.
const RUN_FILES: [&str; 3] = [LAST_CHECKPOINT, BEST_CHECKPOINT, METRICS_FILE];

/// The run files present in `out` (with the history checkpoints `epoch-NNNN.safetensors`
/// of `--keep` and the event files in `tensorboard/`), and the temporary files their
/// writers left when killed (`.last.safetensors.<pid>.<n>.tmp`,
/// `.epoch-NNNN.safetensors.<pid>.link.tmp`).
fn run_files(out: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut present: Vec<PathBuf> = RUN_FILES
        .iter()
        .map(|f| out.join(f))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    let mut leftovers = Vec::new();
    let list = |dir: &Path| -> Result<Vec<(String, PathBuf)>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("list {}", dir.display())),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            names.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
        names.sort();
        Ok(names)
    };
    for (name, path) in list(out)? {
        if sv_core::fs::is_temp_name(&name)
            && (RUN_FILES
                .iter()
                .any(|f| name.starts_with(&format!(".{f}.")))
                || name.starts_with(".epoch-"))
        {
            leftovers.push(path);
        } else if sv_train::checkpoint::epoch_of(&name).is_some() {
            present.push(path);
        }
    }
    for (name, path) in list(&out.join(sv_train::metrics::TENSORBOARD_DIR))? {
        if name.starts_with("events.out.tfevents.") {
            present.push(path);
        }
    }
    Ok((present, leftovers))
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the output folder holds decides how the run starts: a new run needs a folder
/// without a run (or `--force`, which deletes that run's files first); `--resume`
/// continues from `last.safetensors`. Returns the checkpoint to resume from.
///
/// In a data-parallel job only rank 0 (`lead`) deletes: the other ranks take the same
/// decision from the same flags without touching the folder (rank 0 writes nothing
/// before every rank has joined).
fn prepare_out(args: &Args, lead: bool) -> Result<Option<PathBuf>> {
    let out = &args.out;
    if let Ok(m) = std::fs::metadata(out)
        && !m.is_dir()
    {
        bail!(
            "--out {} is {}, not a folder",
            out.display(),
            sv_core::fs::describe_type(m.file_type())
        );
    }
    let (present, leftovers) = run_files(out)?;
    let last = out.join(LAST_CHECKPOINT);
    if args.force && !lead {
        return Ok(None);
    }
    if args.force {
        for p in present.iter().chain(&leftovers) {
            if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                bail!(
                    "{} is a folder: --force deletes only a run's own files; move it away",
                    p.display()
                );
            }
            std::fs::remove_file(p).with_context(|| format!("delete {}", p.display()))?;
        }
        if !present.is_empty() {
            eprintln!(
                "--force: deleted the earlier run's {} in {}",
                names(&present),
                out.display()
            );
        }
        return Ok(None);
    }
    if args.resume {
        if last.exists() {
            return Ok(Some(last));
        }
        if out.join(BEST_CHECKPOINT).exists() {
            bail!(
                "--resume: {} holds {BEST_CHECKPOINT} but no {LAST_CHECKPOINT} to continue from; \
                 pass --force to start a new run there (deletes {})",
                out.display(),
                names(&present)
            );
        }
        eprintln!("no {} yet: starting a new run", last.display());
        return Ok(None);
    }
    if !present.is_empty() {
        bail!(
            "{} already holds a training run ({}): pass --resume to continue it, or --force to \
             delete those files and start a new one",
            out.display(),
            names(&present)
        );
    }
    Ok(None)
}

/// Shard sets' classes and image sides, checked before any work: val's classes must
/// be train's, label for label, and its images of the same side; the model's crop
/// must fit in the images.
fn check_data(args: &Args, train: &Dataset, val: Option<&Dataset>, crop: i64) -> Result<()> {
    let train_dir = args.train.as_deref().unwrap_or(Path::new("?"));
    let side = train.geometry().side;
    if crop > i64::from(side) {
        bail!(
            "the model takes {crop}x{crop} crops, larger than the {side}x{side} images of {}: \
             build the shards with a larger --size (the paper: 256) or train a smaller model",
            train_dir.display()
        );
    }
    if let (Some(v), Some(vdir)) = (val, &args.val) {
        sv_core::compare_classes(
            &format!("train ({})", train_dir.display()),
            train.classes(),
            &format!("val ({})", vdir.display()),
            v.classes(),
        )
        .context("refusing to validate with other labels (build val with --classes-from TRAIN)")?;
        let vside = v.geometry().side;
        if vside != side {
            bail!(
                "val ({}) holds {vside}x{vside} images, train ({}) {side}x{side}: validation \
                 must see images of the side the model trains on",
                vdir.display(),
                train_dir.display()
            );
        }
    }
    Ok(())
}

pub fn run(args: Args, given: &Given) -> Result<i32> {
    let (device, job) = match Role::resolve(&args.dist)? {
        Role::Parent(n) => return dist::run_local_ranks(n, &args.dist, &args.device),
        Role::Single => (sv_train::parse_device(&args.device)?, None),
        Role::Rank(env) => (dist::rank_device(&env, &args.device)?, Some(env)),
    };
    // rank 0 speaks for the job and alone touches the output folder
    let lead = job.as_ref().is_none_or(|e| e.rank == 0);
    let cfg = config(&args)?;
    if let Some(steps) = args.synthetic_data {
        return ceiling(&args, cfg, device, steps, job.as_ref());
    }
    // SIGTERM, SIGINT, SIGUSR1: finish the step, write last.safetensors, exit 75
    sv_train::stop::install()?;
    let train_dir = args.train.as_ref().context("--train is required")?;
    let train = Arc::new(
        Dataset::open(train_dir).with_context(|| format!("open {}", train_dir.display()))?,
    );
    let val = match &args.val {
        Some(v) => Some(Dataset::open(v).with_context(|| format!("open {}", v.display()))?),
        None => None,
    };
    if !["pipeline", "simple"].contains(&args.loader.as_str()) {
        bail!("unknown --loader {} (pipeline, simple)", args.loader);
    }
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
    let data = DataSettings {
        side: train.geometry().side,
        mirror: !args.no_mirror,
        lighting,
        loader: args.loader.clone(),
        dataset: train.manifest().checksum.clone(),
    };
    let resume_from = prepare_out(&args, lead)?;
    if lead && resume_from.is_none() && args.stats.is_none() {
        tracing::warn!("no --stats: ImageNet's usual mean/std, no PCA lighting");
    }
    let (cfg, crop) = match &resume_from {
        Some(last) => {
            let header = checkpoint::read_header(last)
                .with_context(|| format!("resume from {}", last.display()))?;
            let cfg = super::resume::settings(
                &super::resume::Invocation {
                    args: &args,
                    given,
                    config: cfg,
                    train: &train,
                    norm: &norm,
                    data,
                },
                &header,
            )
            .with_context(|| format!("--resume from {}", last.display()))?;
            (cfg, header.meta.model.input_side)
        }
        None => {
            let spec = ModelSpec::by_name(&args.model, train.classes().len() as i64)?;
            let cfg = TrainConfig {
                data: Some(data),
                ..cfg
            };
            (cfg, spec.input_side)
        }
    };
    check_data(&args, &train, val.as_ref(), crop)?;
    let mut trainer = match &resume_from {
        Some(last) => Trainer::resume(last, cfg, device, &args.out)
            .with_context(|| format!("resume from {}", last.display()))?,
        None => Trainer::new(cfg, train.classes().to_vec(), norm, device, &args.out)?,
    };
    let spec = trainer.model().spec().clone();
    let cfg = trainer.config().clone();
    let data = cfg.data.clone().context("the run's data settings")?;
    let mut source: Box<dyn TrainData> = match data.loader.as_str() {
        "simple" if job.as_ref().is_some_and(|e| e.world_size > 1) => {
            bail!("--loader simple reads the whole epoch on every rank; use --loader pipeline")
        }
        "simple" => {
            let aug = AugmentConfig {
                crop: spec.input_side as usize,
                mirror: data.mirror,
                lighting: data.lighting,
            };
            Box::new(
                ShardSource::new(train.clone(), cfg.batch_size, cfg.seed, aug)?
                    .verify(!args.no_verify),
            )
        }
        _ => {
            let config = sv_pipeline::LoaderConfig {
                batch_size: cfg.batch_size,
                seed: cfg.seed,
                workers: args.workers.unwrap_or_else(num_cpus::get),
                augment: sv_pipeline::Augment::Train {
                    crop: spec.input_side as u32,
                    flip: data.mirror,
                    lighting: data.lighting,
                },
                verify: !args.no_verify,
                release_pages: args.release_pages,
                // this rank's slice of every epoch
                rank: job.as_ref().map_or(0, |e| e.rank),
                world_size: job.as_ref().map_or(1, |e| e.world_size),
                ..Default::default()
            };
            Box::new(PipelineSource::new(train.clone(), config)?)
        }
    };
    if let Some(env) = &job {
        let coll = dist::join(env, device, &args.dist)?;
        trainer
            .distribute(coll, args.dist.parallel())
            .with_context(|| format!("rank {} of {}", env.rank, env.world_size))?;
    }
    let (rank, world) = (trainer.rank(), trainer.world_size());
    let bpe = source.batches_per_epoch();
    let total_steps = cfg.max_steps.unwrap_or(u64::MAX).min(bpe * cfg.epochs);
    let ranks = if world > 1 {
        format!(", {world} ranks: global batch {}", cfg.batch_size * world)
    } else {
        String::new()
    };
    if lead {
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
            train.len(),
            cfg.batch_size,
            trainer.step()
        );
    }
    let pb = if lead {
        sv_cli::progress::bar("train", total_steps, "steps")
    } else {
        sv_cli::progress::hidden("train")
    };
    pb.set_position(trainer.step());
    pb.reset_eta();
    let mut clock = std::time::Instant::now(); // since the last epoch line
    let outcome = trainer.run(source.as_mut(), val.as_ref(), &mut |e| match e {
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
    let code = match outcome.stopped {
        Some(_) => sv_train::stop::STOPPED_EXIT_CODE,
        None => 0,
    };
    if !lead {
        return Ok(code);
    }
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
        "verified": !args.no_verify,
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
    Ok(code)
}

fn ceiling(
    args: &Args,
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
        t.distribute(dist::join(env, device, &args.dist)?, args.dist.parallel())?;
    }
    let warmup = (steps / 10).clamp(1, 20);
    // the ranks step together: the job trains world x what one rank does
    let ips = t.bench_compute(steps, warmup)? * t.world_size() as f64;
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
