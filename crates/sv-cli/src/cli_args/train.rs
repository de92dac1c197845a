//! The flags of `supervision train`, their fixed choices as enums, and which of them
//! were typed (a resumed run compares those with its checkpoint).

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::ArgMatches;
use clap::parser::ValueSource;

use super::dist::DistArgs;
use super::numbers::{above_one_f32, fraction, fraction_f32, non_negative_f32, positive_f32};
use crate::args::{MAX_BATCH_SIZE, MAX_CLASSES, MAX_WORKERS, at_least_one, count_up_to};

/// A flag with a fixed set of values: a [`clap::ValueEnum`] whose names are what the
/// flag takes, `as_str` giving the name back (for messages and the checkpoint).
macro_rules! choice {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
        pub enum $name {
            $($(#[$vm])* #[value(name = $text)] $var),+
        }

        impl $name {
            /// The value as the flag takes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use choice;

/// The plateau schedule's defaults, as the trainer's (sv-train's `ScheduleConfig`)
/// are: evaluations without improvement before a drop, the improvement that counts.
/// supervision-torch checks at compile time that they agree.
pub const PAPER_PATIENCE: u32 = 4;
/// See [`PAPER_PATIENCE`].
pub const PAPER_THRESHOLD: f64 = 1e-3;
/// Drops of the rate at most (the paper: 3).
pub const PAPER_MAX_DROPS: u32 = 3;

choice! {
    /// `--model`: the registered models ([`sv_model::MODEL_NAMES`]).
    Model {
        Alexnet = "alexnet",
        AlexnetOwt = "alexnet-owt",
        AlexnetTiny = "alexnet-tiny",
        AlexnetOwtTiny = "alexnet-owt-tiny",
    }
}

choice! {
    /// `--init`: the weight initialisation.
    Init { Paper = "paper", Torch = "torch", Kaiming = "kaiming" }
}

impl From<Init> for sv_model::InitScheme {
    fn from(i: Init) -> Self {
        match i {
            Init::Paper => sv_model::InitScheme::Paper,
            Init::Torch => sv_model::InitScheme::Torch,
            Init::Kaiming => sv_model::InitScheme::Kaiming,
        }
    }
}

choice! {
    /// `--input-scale`: what the model's input values are.
    Scale { Raw = "raw", Std = "std" }
}

impl From<Scale> for sv_model::InputScale {
    fn from(s: Scale) -> Self {
        match s {
            Scale::Raw => sv_model::InputScale::Raw,
            Scale::Std => sv_model::InputScale::Std,
        }
    }
}

choice! {
    /// `--schedule`: how the learning rate falls.
    Schedule { Plateau = "plateau", Step = "step", Constant = "constant" }
}

choice! {
    /// `--precision`: the number type of the forward and backward passes.
    Precision { Bf16 = "bf16", Fp16 = "fp16", Fp32 = "fp32" }
}

choice! {
    /// `--lighting`: the PCA lighting convention, or none.
    Lighting { Paper = "paper", CudaConvnet2 = "cuda-convnet2", None = "none" }
}

impl Lighting {
    /// The pipeline's convention (None: no lighting).
    pub fn convention(self) -> Option<sv_pipeline::LightingConvention> {
        match self {
            Lighting::Paper => Some(sv_pipeline::LightingConvention::Paper),
            Lighting::CudaConvnet2 => Some(sv_pipeline::LightingConvention::CudaConvnet2),
            Lighting::None => None,
        }
    }
}

choice! {
    /// `--loader`: the data loader.
    Loader { Pipeline = "pipeline", Simple = "simple" }
}

/// Flags of `supervision train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
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
    /// The model (`supervision model summary NAME` describes each).
    #[arg(long, value_enum, default_value = "alexnet")]
    pub model: Model,
    /// Weight init: paper (N(0, 0.01^2), the paper's biases), torch (PyTorch's
    /// default), kaiming (He et al.). Default: the model's own (alexnet: paper;
    /// alexnet-owt: torch; the tiny models: kaiming).
    #[arg(long, value_enum, value_name = "paper|torch|kaiming")]
    pub init: Option<Init>,
    /// Input values: `raw` = 0-255 minus the mean (image), nothing else (the paper,
    /// section 2); `std` = also divided by the channel std of --stats (torchvision's
    /// recipe). Default: the model's own (alexnet: raw; alexnet-owt and the tiny
    /// models: std). Kept in the checkpoint for eval, predict and --resume.
    #[arg(long, value_enum, value_name = "raw|std")]
    pub input_scale: Option<Scale>,
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
    #[arg(long, value_enum, default_value = "plateau")]
    pub schedule: Schedule,
    /// Plateau: evaluations without improvement before dividing (4 keeps a noisy
    /// --val-limit subset from cutting the rate early; see docs/training.md).
    #[arg(long, default_value_t = PAPER_PATIENCE, allow_negative_numbers = true)]
    pub patience: u32,
    /// Plateau: decrease of the top-1 error (fraction, 0 or more, below 1) that counts
    /// as improvement.
    #[arg(long, default_value_t = PAPER_THRESHOLD, allow_negative_numbers = true, value_parser = fraction)]
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
    #[arg(long, value_enum, value_name = "bf16|fp16|fp32")]
    pub precision: Option<Precision>,
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
    /// PCA lighting: the paper's convention, cuda-convnet2's, or none.
    #[arg(long, value_enum, default_value = "paper")]
    pub lighting: Lighting,
    /// No random reflections.
    #[arg(long)]
    pub no_mirror: bool,
    /// Data loader: `pipeline` (sv-pipeline, worker threads) or `simple` (one
    /// thread, the reference).
    #[arg(long, value_enum, default_value = "pipeline")]
    pub loader: Loader,
    /// Pipeline worker threads (default: all cores).
    #[arg(long, allow_negative_numbers = true, value_parser = count_up_to(MAX_WORKERS))]
    pub workers: Option<usize>,
    /// Do not check each training record's CRC-32 as it is read (checked by default:
    /// a damaged record stops training naming its shard and record; the cost is in
    /// docs/benchmarks.md). Validation records are always checked.
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
    /// Data-parallel training: --nproc-per-node, --collective, timeouts.
    #[command(flatten)]
    pub dist: DistArgs,
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

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn the_model_choices_are_the_registered_models() {
        let names: Vec<_> = Model::value_variants().iter().map(|m| m.as_str()).collect();
        assert_eq!(names, sv_model::MODEL_NAMES);
        for m in Model::value_variants() {
            assert_eq!(Model::from_str(m.as_str(), false), Ok(*m));
        }
    }

    #[test]
    fn choices_parse_by_their_flag_names() {
        assert_eq!(
            Lighting::from_str("cuda-convnet2", false),
            Ok(Lighting::CudaConvnet2)
        );
        assert_eq!(Lighting::None.convention(), None);
        assert_eq!(Precision::from_str("fp16", false), Ok(Precision::Fp16));
        assert!(Schedule::from_str("cosine", false).is_err());
        assert_eq!(
            sv_model::InitScheme::from(Init::Kaiming),
            "kaiming".parse().unwrap()
        );
    }
}
