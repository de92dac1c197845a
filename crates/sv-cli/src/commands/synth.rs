//! `supervision synth`: write a small synthetic ImageNet look-alike (sv-synth).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sv_cli::args::{count_up_to, zero_up_to};

/// [`sv_synth::MAX_IMAGES`] as a per-class bound (the total is checked by sv-synth).
const MAX_IMAGES: u32 = sv_synth::MAX_IMAGES as u32; // 5,000,000 fits

/// Write a small synthetic ImageNet look-alike in ImageNet's Kaggle layout.
///
/// Writes OUTPUT/train/<wnid>/<wnid>_<i>.JPEG, OUTPUT/val/ILSVRC2012_val_<8 digits>.JPEG
/// (flat), OUTPUT/LOC_val_solution.csv (ImageId,PredictionString with the wnid and the
/// object's box) and OUTPUT/LOC_synset_mapping.txt ("wnid name" per line). Each class
/// is a shape, texture and palette drawn at random positions, scales and rotations
/// over random backgrounds: learnable, not noise. Like ImageNet, a few files are
/// grayscale or CMYK JPEGs and one train file is a PNG named .JPEG. The same seed
/// gives byte-identical files on any machine and thread count.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  supervision synth --output data/synth --classes 10 --per-class 20 --val-per-class 10\n  supervision shard build --input data/synth/train --output data/shards/train"
)]
pub struct Args {
    /// Output directory; must be empty or missing unless --force is given.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Number of classes (at most 10000).
    #[arg(long, default_value_t = 10, value_name = "C", value_parser = count_up_to(sv_synth::MAX_CLASSES))]
    pub classes: u32,
    /// Training images per class (at most 5000000 in all).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = count_up_to(MAX_IMAGES))]
    pub per_class: u32,
    /// Validation images per class (at most 5000000 in all).
    #[arg(long, default_value_t = 10, value_name = "M", value_parser = zero_up_to(MAX_IMAGES))]
    pub val_per_class: u32,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Smallest shorter side of an image, in pixels.
    #[arg(long, default_value_t = 150, value_name = "PX")]
    pub min_side: u32,
    /// Largest longer side of an image, in pixels.
    #[arg(long, default_value_t = 900, value_name = "PX")]
    pub max_side: u32,
    /// Worker threads (0: every core; at most 1024). The output does not depend on it.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = zero_up_to(sv_synth::MAX_THREADS))]
    pub threads: usize,
    /// Also write the same images as ImageNet is downloaded: ILSVRC2012_img_train.tar
    /// (a tar of one tar per class), ILSVRC2012_img_val.tar and
    /// ILSVRC2012_devkit_t12.tar.gz (data/meta.mat and the validation ground truth).
    #[arg(long)]
    pub archives: bool,
    /// Also write the same images as the Hugging Face hub shares ImageNet (may be
    /// given twice): wds, WebDataset tars OUTPUT/wds/imagenet1k-{train,validation}-NNNN.tar
    /// (KEY.jpg, KEY.cls, KEY.json); parquet, OUTPUT/parquet/{train,validation}-*.parquet
    /// (image {bytes, path}, label, ClassLabel names in the huggingface metadata).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Vec<HubFormatArg>,
    /// Samples per WebDataset tar or parquet file (--format).
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = sv_cli::args::at_least_one::<usize>)]
    pub samples_per_file: usize,
    /// Write into a non-empty OUTPUT: first delete what synth writes there (train/,
    /// val/, the label files and the archives); other files are kept.
    #[arg(long)]
    pub force: bool,
}

/// A hub layout for `--format`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum HubFormatArg {
    /// WebDataset tars.
    Wds,
    /// Parquet files.
    Parquet,
}

/// Names synth owns inside its output directory.
const OWNED: [&str; 9] = [
    "wds",
    "parquet",
    "train",
    "val",
    "LOC_val_solution.csv",
    "LOC_synset_mapping.txt",
    sv_synth::archives::TRAIN_TAR,
    sv_synth::archives::VAL_TAR,
    sv_synth::archives::DEVKIT,
];

fn prepare_output(dir: &Path, force: bool) -> anyhow::Result<()> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    if entries.next().is_none() {
        return Ok(());
    }
    if !force {
        bail!(
            "output directory {} is not empty (use --force to replace a previous synth output)",
            dir.display()
        );
    }
    for name in OWNED {
        let p = dir.join(name);
        let result = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else if p.exists() {
            std::fs::remove_file(&p)
        } else {
            Ok(())
        };
        result.with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(())
}

/// Run the command; returns the exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let config = sv_synth::SynthConfig {
        classes: args.classes,
        per_class: args.per_class,
        val_per_class: args.val_per_class,
        seed: args.seed,
        min_side: args.min_side,
        max_side: args.max_side,
        threads: args.threads,
        archives: args.archives,
    };
    // Checked before --force deletes anything: the product of two flags can be refused.
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{e} (--classes, --per-class, --val-per-class)"))?;
    prepare_output(&args.output, args.force)?;
    let total =
        u64::from(args.classes) * (u64::from(args.per_class) + u64::from(args.val_per_class));
    let bar = sv_cli::progress::bar("synth", total, "images");
    let start = std::time::Instant::now();
    let summary = sv_synth::generate(&args.output, &config, |done, _| bar.set_position(done))
        .with_context(|| format!("synth into {}", args.output.display()))?;
    bar.finish_and_clear();
    for f in &args.format {
        let format = match f {
            HubFormatArg::Wds => sv_synth::hub::HubFormat::Wds,
            HubFormatArg::Parquet => sv_synth::hub::HubFormat::Parquet,
        };
        let hub = sv_synth::hub::write_hub(&args.output, format, args.samples_per_file)
            .with_context(|| format!("synth --format into {}", args.output.display()))?;
        sv_cli::outln!(
            "synth: {} samples in {} {} files ({} ..)",
            hub.samples,
            hub.files.len(),
            match f {
                HubFormatArg::Wds => "WebDataset",
                HubFormatArg::Parquet => "parquet",
            },
            hub.files
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    let secs = start.elapsed().as_secs_f64();
    sv_cli::outln!(
        "synth: {} classes, {} train + {} val images ({:.1} MiB) in {:.1}s into {}; quirks: {} grayscale, {} CMYK, {} PNG named .JPEG",
        summary.classes.len(),
        summary.train_images,
        summary.val_images,
        summary.image_bytes as f64 / (1024.0 * 1024.0),
        secs,
        args.output.display(),
        summary.grayscale.len(),
        summary.cmyk.len(),
        summary.png.len(),
    );
    Ok(0)
}
