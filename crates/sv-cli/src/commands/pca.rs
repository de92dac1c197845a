//! `supervision pca compute`: the training set's statistics (mean image, channel
//! moments, RGB covariance and its principal components) for mean subtraction and
//! PCA lighting. The library side is `sv_stats`; this turns flags into a
//! `ComputeConfig`, draws the progress bar and writes the files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, Subcommand};
use sv_shard::Dataset;
use sv_stats::{ComputeConfig, MeanImageInfo};

use sv_cli::progress;

/// Dataset statistics commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// One streaming pass over a shard dataset (raw or jpeg): per-pixel mean image,
    /// per-channel mean and standard deviation, the 3x3 RGB covariance and its
    /// eigen-decomposition, written as JSON (values for 0-255 and [0,1] pixels, and
    /// the PCA lighting magnitudes of the paper's and cuda-convnet2's conventions).
    ///
    /// The result is identical for any --workers. Every record's CRC-32 is checked
    /// unless --no-verify is given.
    Compute(ComputeArgs),
}

/// Flags of `pca compute`.
#[derive(ClapArgs, Debug)]
pub struct ComputeArgs {
    /// The shard dataset (normally the training split).
    #[arg(long, value_name = "DIR")]
    shards: PathBuf,
    /// Where to write the statistics JSON.
    #[arg(long, value_name = "FILE.json")]
    output: PathBuf,
    /// Also write the per-pixel mean image: numpy .npy, float32, shape (3, side, side)
    /// (CHW, RGB), 0-255 scale.
    #[arg(long, value_name = "FILE.npy")]
    mean_image: Option<PathBuf>,
    /// Use a seeded subset of N records for a quick estimate.
    #[arg(long, value_name = "N", value_parser = sv_cli::args::at_least_one::<u64>)]
    sample: Option<u64>,
    /// Worker threads (default: all cores, at most 1024).
    #[arg(long, value_name = "N", value_parser = sv_cli::args::count_up_to(sv_cli::args::MAX_WORKERS))]
    workers: Option<usize>,
    /// Seed of the --sample draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip the per-record CRC-32 check (a little faster; a damaged raw record would
    /// then go into the statistics unnoticed).
    #[arg(long)]
    no_verify: bool,
}

/// Run a `pca` command.
pub fn run(cmd: Cmd) -> anyhow::Result<i32> {
    // The pass reads shards through memory maps (see `shard::run`).
    sv_shard::report_truncated_shards();
    match cmd {
        Cmd::Compute(args) => compute(args),
    }
}

fn compute(args: ComputeArgs) -> anyhow::Result<i32> {
    check_outputs(&args)?;
    let dataset = Dataset::open(&args.shards)
        .with_context(|| format!("opening shard dataset {}", args.shards.display()))?;
    if dataset.is_empty() {
        bail!(
            "{}: the dataset holds no records; statistics need at least one image",
            args.shards.display()
        );
    }
    let config = ComputeConfig {
        workers: args.workers.unwrap_or_else(sv_cli::args::default_workers),
        sample: args.sample,
        seed: args.seed,
        verify: !args.no_verify,
    };
    let visit = args
        .sample
        .map_or(dataset.len() as u64, |n| n.min(dataset.len() as u64));
    let bar = progress::bar("pca compute", visit, "images");
    let started = Instant::now();
    let computed = sv_stats::compute(&dataset, &config, &|n| bar.inc(n))
        .with_context(|| format!("computing statistics of {}", args.shards.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let mut stats = computed.stats;
    // Unusable statistics (a channel without variance) are refused before either
    // file is written.
    stats
        .validate(&args.output)
        .context("the statistics cannot be used")?;
    if let Some(path) = &args.mean_image {
        computed
            .mean_image
            .save_npy(path)
            .context("writing the mean image")?;
        stats.mean_image = Some(MeanImageInfo::new(
            path.display().to_string(),
            computed.mean_image.side,
        ));
    }
    stats.save(&args.output).context("writing the statistics")?;

    let bytes = stats.pixels as f64 * 3.0;
    let workers = config.workers.clamp(1, visit.max(1) as usize);
    sv_cli::outln!(
        "{} images of {} records ({} pixels each channel), {:.1} MB of pixels in {:.2} s: {:.2} GB/s with {} workers{}",
        stats.images,
        stats.source.records,
        stats.pixels,
        bytes / 1e6,
        seconds,
        bytes / seconds.max(1e-9) / 1e9,
        workers,
        if config.verify { ", CRC-checked" } else { "" }
    );
    let s = &stats.scale_255;
    sv_cli::outln!("0-255 scale   mean {}", fmt3(&s.mean));
    sv_cli::outln!("              std  {}", fmt3(&s.std));
    sv_cli::outln!("              eigenvalues {}", fmt3(&s.eigenvalues));
    let u = &stats.scale_unit;
    sv_cli::outln!("[0,1] scale   mean {}", fmt3(&u.mean));
    sv_cli::outln!("              std  {}", fmt3(&u.std));
    sv_cli::outln!("              eigenvalues {}", fmt3(&u.eigenvalues));
    for (i, v) in stats.eigenvectors.iter().enumerate() {
        sv_cli::outln!("eigenvector {i}  {}", fmt3(v));
    }
    sv_cli::outln!("wrote {}", args.output.display());
    if let Some(path) = &args.mean_image {
        sv_cli::outln!("wrote {}", path.display());
    }
    Ok(0)
}

/// Refuse output paths that cannot be written before the pass, not after it: a
/// folder or other non-file at either path, or one path given for both files.
fn check_outputs(args: &ComputeArgs) -> anyhow::Result<()> {
    let mut outputs = vec![("--output", &args.output)];
    if let Some(npy) = &args.mean_image {
        if npy == &args.output {
            bail!(
                "--output and --mean-image both name {}: give two files",
                npy.display()
            );
        }
        outputs.push(("--mean-image", npy));
    }
    for (flag, path) in outputs {
        sv_core::fs::check_write_target(path)
            .with_context(|| format!("{flag} {} cannot be written", path.display()))?;
        ensure_parent(path)?;
    }
    Ok(())
}

fn fmt3(v: &[f64; 3]) -> String {
    format!("[{:.6}, {:.6}, {:.6}]", v[0], v[1], v[2])
}

fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
    }
    Ok(())
}
