//! `supervision train`'s flags made into typed settings, once, with every error found
//! here (as uv's `PipInstallSettings::resolve`): the command body never reads clap's
//! arguments for what the run is.
//!
//! Two stages, because the output folder sits between them:
//! - [`flag_config`]: the run the flags describe, checked as numbers (f32 ranges of the
//!   values the trainer makes from two flags), before any file is read or written;
//! - [`TrainSettings::resolve`]: with the data opened ([`Inputs`]) and, for `--resume`,
//!   the checkpoint's header: the configuration the run trains with (a resumed run's
//!   is its checkpoint's, with the changes the flags may make), the data settings, the
//!   loader's, and the checks that the data fit the model and each other.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sv_cli::cli_args::numbers::{Falls, PLATEAU_MIN_LR, check_f32};
use sv_cli::cli_args::train::{Loader, Precision as CliPrecision, Schedule};
use sv_cli::cli_args::{Given, TrainArgs};
use sv_shard::Dataset;
use sv_stats::{MeanImage, PcaStats};
use sv_train::checkpoint;
use sv_train::data::DataSettings;
use sv_train::input::{Normalization, PixelMean};
use sv_train::model::ModelSpec;
use sv_train::optim::SgdConfig;
use sv_train::params::Precision;
use sv_train::schedule::ScheduleConfig;
use sv_train::sv_pipeline;
use sv_train::trainer::TrainConfig;

// the defaults `train --help` shows are the trainer's
const _: () = assert!(sv_cli::cli_args::train::PAPER_PATIENCE == ScheduleConfig::PAPER_PATIENCE);
const _: () =
    assert!(sv_cli::cli_args::train::PAPER_MAX_DROPS == sv_train::schedule::PAPER_MAX_DROPS);
const _: () = assert!(sv_cli::cli_args::train::PAPER_THRESHOLD == ScheduleConfig::PAPER_THRESHOLD);

/// How the rate of the run the flags describe can fall (for [`check_f32`]).
fn falls(args: &TrainArgs) -> Falls {
    match args.schedule {
        Schedule::Step => Falls::Step {
            divisor: args.lr_divisor,
            drops: args.max_drops,
            every: args.step_every,
            epochs: args.epochs,
        },
        Schedule::Constant => Falls::Constant,
        Schedule::Plateau => Falls::Plateau {
            divisor: args.lr_divisor,
            drops: args.max_drops,
        },
    }
}

fn schedule(args: &TrainArgs) -> ScheduleConfig {
    let factor = 1.0 / args.lr_divisor;
    match args.schedule {
        Schedule::Plateau => ScheduleConfig::Plateau {
            patience: args.patience,
            threshold: args.threshold,
            factor,
            min_lr: PLATEAU_MIN_LR,
            max_drops: args.max_drops,
        },
        Schedule::Step => ScheduleConfig::Step {
            every: args.step_every,
            factor,
            max_drops: args.max_drops,
        },
        Schedule::Constant => ScheduleConfig::Constant,
    }
}

fn precision(p: CliPrecision) -> Precision {
    match p {
        CliPrecision::Bf16 => Precision::Bf16,
        CliPrecision::Fp16 => Precision::Fp16,
        CliPrecision::Fp32 => Precision::Fp32,
    }
}

/// The run the flags describe (a new run's configuration, without its data settings),
/// checked before anything is read or written: the decay step and the lowest rate the
/// schedule reaches must be f32 values, as each flag already is.
pub fn flag_config(args: &TrainArgs) -> Result<TrainConfig> {
    check_f32(args.lr, args.weight_decay, falls(args)).map_err(anyhow::Error::msg)?;
    Ok(TrainConfig {
        model: args.model.as_str().to_string(),
        init: args.init.map(Into::into),
        input_scale: args.input_scale.map(Into::into),
        batch_size: args.batch_size,
        epochs: args.epochs,
        max_steps: args.max_steps,
        lr: args.lr,
        schedule: schedule(args),
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
        precision: args.precision.map(precision),
        channels_last: args.channels_last,
        loss_scale: Some(args.loss_scale),
        copy_stream: Some(args.copy_stream),
        dropout: None,
        data: None,
        keep_epochs: args.keep,
    })
}

/// What the run reads: the shard sets, and the normalisation and lighting of
/// `--stats` and `--mean-image`.
pub struct Inputs {
    /// The training set.
    pub train: Arc<Dataset>,
    /// Where it is (for messages).
    pub train_dir: PathBuf,
    /// The validation set, if any.
    pub val: Option<Dataset>,
    /// Mean, std and mean image, or ImageNet's usual mean/std.
    pub norm: Normalization,
    /// The PCA lighting of `--stats` and `--lighting`, if any.
    pub lighting: Option<sv_pipeline::Lighting>,
}

impl Inputs {
    /// Opens what the flags name; each error names its file.
    pub fn open(args: &TrainArgs) -> Result<Inputs> {
        let train_dir = args.train.clone().context("--train is required")?;
        let train = Arc::new(
            Dataset::open(&train_dir).with_context(|| format!("open {}", train_dir.display()))?,
        );
        let val = match &args.val {
            Some(v) => Some(Dataset::open(v).with_context(|| format!("open {}", v.display()))?),
            None => None,
        };
        let (mut norm, lighting) = stats(args)?;
        if let Some(path) = &args.mean_image {
            norm.mean_image = Some(mean_image(path, &train_dir, train.geometry().side)?);
        }
        Ok(Inputs {
            train,
            train_dir,
            val,
            norm,
            lighting,
        })
    }
}

/// Normalisation statistics and the PCA lighting (one type for both loaders).
fn stats(args: &TrainArgs) -> Result<(Normalization, Option<sv_pipeline::Lighting>)> {
    let Some(path) = &args.stats else {
        return Ok((Normalization::default(), None));
    };
    let s = PcaStats::load(path).with_context(|| format!("read statistics {}", path.display()))?;
    let norm = Normalization {
        mean: s.scale_255.mean,
        std: s.scale_255.std,
        mean_image: None,
    };
    Ok((norm, args.lighting.convention().map(|c| s.lighting(c))))
}

/// The `--mean-image` file, which must be of the training images' side.
fn mean_image(path: &Path, train_dir: &Path, side: u32) -> Result<PixelMean> {
    let m = MeanImage::load_npy(path)
        .with_context(|| format!("read the mean image {}", path.display()))?;
    if m.side != side {
        bail!(
            "{} is a {s}x{s} mean image but {} holds {side}x{side} images",
            path.display(),
            train_dir.display(),
            s = m.side
        );
    }
    PixelMean::new(m.side, m.data).with_context(|| format!("the mean image {}", path.display()))
}

/// How the training batches are read.
#[derive(Debug, Clone, Copy)]
pub struct LoaderSettings {
    /// Which loader.
    pub kind: Loader,
    /// Pipeline worker threads.
    pub workers: usize,
    /// Check each training record's CRC-32.
    pub verify: bool,
    /// Unmap each record's pages once used.
    pub release_pages: bool,
}

/// Everything `train` needs to know to run, typed.
pub struct TrainSettings {
    /// The configuration the run trains with (a resumed run: its checkpoint's, with
    /// the changes the flags may make), data settings included.
    pub config: TrainConfig,
    /// The checkpoint to continue from (`--resume`), or none for a new run.
    pub resume_from: Option<PathBuf>,
    /// The loader's settings.
    pub loader: LoaderSettings,
}

impl TrainSettings {
    /// Resolves the run: `config` (from [`flag_config`]) with the data of `inputs`, and
    /// for `--resume` the checkpoint `resume_from` (its settings, checked against the
    /// flags typed, `given`). Checks that the data fit the model and each other.
    pub fn resolve(
        args: &TrainArgs,
        given: &Given,
        config: TrainConfig,
        inputs: &Inputs,
        resume_from: Option<PathBuf>,
    ) -> Result<TrainSettings> {
        let data = DataSettings {
            side: inputs.train.geometry().side,
            mirror: !args.no_mirror,
            lighting: inputs.lighting,
            loader: args.loader.as_str().to_string(),
            dataset: inputs.train.manifest().checksum.clone(),
        };
        let (config, crop) = match &resume_from {
            Some(last) => {
                let header = checkpoint::read_header(last)
                    .with_context(|| format!("resume from {}", last.display()))?;
                let invocation = super::resume::Invocation {
                    args,
                    given,
                    config,
                    train: &inputs.train,
                    norm: &inputs.norm,
                    data,
                };
                let config = super::resume::settings(&invocation, &header)
                    .with_context(|| format!("--resume from {}", last.display()))?;
                (config, header.meta.model.input_side)
            }
            None => {
                let classes = inputs.train.classes().len() as i64;
                let spec = ModelSpec::by_name(args.model.as_str(), classes)?;
                let config = TrainConfig {
                    data: Some(data),
                    ..config
                };
                (config, spec.input_side)
            }
        };
        check_data(inputs, args.val.as_deref(), crop)?;
        // the loader the run was started with (a checkpoint's data settings name it)
        let kind = match config.data.as_ref().map(|d| d.loader.as_str()) {
            Some("simple") => Loader::Simple,
            Some("pipeline") | None => Loader::Pipeline,
            Some(other) => bail!("the checkpoint's run names an unknown loader {other:?}"),
        };
        Ok(TrainSettings {
            config,
            resume_from,
            loader: LoaderSettings {
                kind,
                workers: args.workers.unwrap_or_else(sv_cli::args::default_workers),
                verify: !args.no_verify,
                release_pages: args.release_pages,
            },
        })
    }

    /// The data settings of the run.
    pub fn data(&self) -> Result<&DataSettings> {
        self.config.data.as_ref().context("the run's data settings")
    }
}

/// Shard sets' classes and image sides, checked before any work: val's classes must
/// be train's, label for label, and its images of the same side; the model's crop
/// must fit in the images.
fn check_data(inputs: &Inputs, val_dir: Option<&Path>, crop: i64) -> Result<()> {
    let train_dir = &inputs.train_dir;
    let side = inputs.train.geometry().side;
    if crop > i64::from(side) {
        bail!(
            "the model takes {crop}x{crop} crops, larger than the {side}x{side} images of {}: \
             build the shards with a larger --size (the paper: 256) or train a smaller model",
            train_dir.display()
        );
    }
    if let (Some(v), Some(vdir)) = (&inputs.val, val_dir) {
        sv_core::compare_classes(
            &format!("train ({})", train_dir.display()),
            inputs.train.classes(),
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
