//! `supervision bench pipeline`: stream batches from a shard dataset through the
//! loader as training would, and report throughput, time per stage and a digest of
//! the batch contents (equal for equal seeds whatever the worker count).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use serde::Serialize;
use sv_cli::args::{MAX_BATCH_SIZE, MAX_WORKERS, count_up_to};
use sv_pipeline::{
    Augment, Layout, Lighting, LightingConvention, Loader, LoaderConfig, Mean, Normalize, Output,
};
use sv_shard::Dataset;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Stream augmented batches (random crop, flip, PCA lighting) from a shard
    /// dataset and report images/s, MB/s, time per stage and a digest of the batch
    /// contents. The same seed gives the same digest for any --workers.
    Pipeline(PipelineArgs),
}

/// Batch form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputForm {
    /// uint8 crops (+ per-image lighting offsets and flips), for the device.
    U8,
    /// float32 NCHW, lighting and normalisation done on the CPU.
    F32,
}

/// Memory order of uint8 batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// [N, H, W, 3]
    Nhwc,
    /// [N, 3, H, W]
    Nchw,
}

/// PCA lighting convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LightingArg {
    /// The paper as fb.resnet.torch: eigval-scaled, [0,1] pixels.
    Paper,
    /// cuda-convnet2: sqrt(eigval)-scaled, 0-255 pixels.
    CudaConvnet2,
    /// No lighting.
    None,
}

/// Flags of `bench pipeline`.
#[derive(ClapArgs, Debug)]
pub struct PipelineArgs {
    /// The shard dataset.
    #[arg(long, value_name = "DIR")]
    shards: PathBuf,
    /// Samples per batch.
    #[arg(long, default_value_t = 128, value_parser = count_up_to(MAX_BATCH_SIZE))]
    batch_size: usize,
    /// Worker threads (default: all cores, at most 1024).
    #[arg(long, value_name = "N", value_parser = count_up_to(MAX_WORKERS))]
    workers: Option<usize>,
    /// Batches to time (epochs repeat as needed).
    #[arg(long, default_value_t = 100, value_parser = sv_cli::args::at_least_one::<u64>)]
    batches: u64,
    /// Batches to run before the clock starts (they still count in the digest).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Batch form.
    #[arg(long, value_enum, default_value_t = OutputForm::U8)]
    output: OutputForm,
    /// Memory order of uint8 batches (float batches are always NCHW).
    #[arg(long, value_enum, default_value_t = LayoutArg::Nhwc)]
    layout: LayoutArg,
    /// Crop side.
    #[arg(long, default_value_t = 227)]
    crop: u32,
    /// Seed of the order and of every sample's random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Statistics from `supervision pca compute`: lighting eigen-decomposition and,
    /// for --output f32, the channel mean and std. Default: fb.resnet.torch's
    /// lighting constants and torchvision's ImageNet mean/std.
    #[arg(long, value_name = "FILE.json")]
    stats: Option<PathBuf>,
    /// PCA lighting convention.
    #[arg(long, value_enum, default_value_t = LightingArg::Paper)]
    lighting: LightingArg,
    /// Check every record's CRC-32 as it is read.
    #[arg(long)]
    verify: bool,
    /// Unmap each record's pages once used, so resident memory stays independent of
    /// the dataset size (the page cache keeps the data; later epochs fault it back).
    #[arg(long)]
    release_pages: bool,
    /// Do not hash the batches (pixels, labels and lighting offsets; the digest costs
    /// the consumer thread some time).
    #[arg(long)]
    no_digest: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Stage times, CPU seconds summed over workers.
#[derive(Serialize, Debug)]
struct StageSeconds {
    verify: f64,
    decode: f64,
    augment: f64,
    consumer_wait: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    shards: String,
    codec: String,
    records: usize,
    side: u32,
    crop: u32,
    output: &'static str,
    layout: &'static str,
    batch_size: u64,
    workers: u64,
    warmup_batches: u64,
    batches: u64,
    images: u64,
    seconds: f64,
    images_per_s: f64,
    input_mb_per_s: f64,
    output_mb_per_s: f64,
    stage_seconds: StageSeconds,
    /// Resident memory of the process (Linux only).
    memory: Option<Memory>,
    release_pages: bool,
    digest: Option<String>,
}

/// Resident memory in MiB: the kernel's high-water mark of the whole resident set,
/// and the largest anonymous (heap, stacks, batch buffers) and file-backed (mapped
/// shards, the binary) parts seen after any batch.
#[derive(Serialize, Debug, Default, Clone, Copy)]
struct Memory {
    peak_rss_mib: f64,
    peak_anon_mib: f64,
    peak_file_mib: f64,
}

/// `/proc/self/status` fields in KiB: (VmHWM, RssAnon, RssFile), or `None` where
/// there is no such file (not Linux).
fn proc_status() -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmHWM:")?, field("RssAnon:")?, field("RssFile:")?))
}

impl Memory {
    fn sample(peak: &mut Option<Memory>) {
        let Some((hwm, anon, file)) = proc_status() else {
            return;
        };
        let mib = |kib: u64| kib as f64 / 1024.0;
        let m = peak.get_or_insert_with(Memory::default);
        m.peak_rss_mib = m.peak_rss_mib.max(mib(hwm));
        m.peak_anon_mib = m.peak_anon_mib.max(mib(anon));
        m.peak_file_mib = m.peak_file_mib.max(mib(file));
    }
}

/// Run a `bench` command.
pub fn run(cmd: Cmd) -> anyhow::Result<i32> {
    // The loader reads shards through memory maps (see `shard::run`).
    sv_shard::report_truncated_shards();
    match cmd {
        Cmd::Pipeline(args) => pipeline(args),
    }
}

/// The lighting settings of a `pca compute` statistics file.
fn lighting_from_stats(stats: &sv_stats::PcaStats, convention: LightingConvention) -> Lighting {
    let mut eigvec = [[0f32; 3]; 3];
    for (j, v) in stats.eigenvectors.iter().enumerate() {
        for (c, x) in v.iter().enumerate() {
            // the stats file lists eigenvectors as rows; sv-augment wants columns
            eigvec[c][j] = *x as f32;
        }
    }
    Lighting {
        eigval: stats.scale_unit.eigenvalues.map(|v| v as f32),
        eigvec,
        convention,
        std: stats.lighting.alpha_std as f32,
    }
}

fn pipeline(args: PipelineArgs) -> anyhow::Result<i32> {
    let Some(total) = args.warmup.checked_add(args.batches) else {
        bail!(
            "--warmup {} plus --batches {} is more than 2^64 batches",
            args.warmup,
            args.batches
        );
    };
    let dataset = Arc::new(
        Dataset::open(&args.shards)
            .with_context(|| format!("opening the shard dataset {}", args.shards.display()))?,
    );
    let stats = match &args.stats {
        Some(path) => Some(
            sv_stats::PcaStats::load(path)
                .with_context(|| format!("reading statistics {}", path.display()))?,
        ),
        None => None,
    };
    let lighting = match args.lighting {
        LightingArg::None => None,
        LightingArg::Paper | LightingArg::CudaConvnet2 => {
            let convention = if args.lighting == LightingArg::Paper {
                LightingConvention::Paper
            } else {
                LightingConvention::CudaConvnet2
            };
            Some(match &stats {
                Some(s) => lighting_from_stats(s, convention),
                None => Lighting {
                    convention,
                    ..Lighting::fb_resnet()
                },
            })
        }
    };
    let layout = match args.layout {
        LayoutArg::Nhwc => Layout::Nhwc,
        LayoutArg::Nchw => Layout::Nchw,
    };
    let output = match args.output {
        OutputForm::U8 => Output::U8(layout),
        OutputForm::F32 => Output::F32(match &stats {
            Some(s) => Normalize {
                mean: Mean::Channel(s.scale_255.mean.map(|v| v as f32)),
                std: s.scale_255.std.map(|v| v as f32),
            },
            None => Normalize::imagenet(),
        }),
    };
    let workers = args.workers.unwrap_or_else(sv_cli::args::default_workers);
    let config = LoaderConfig {
        batch_size: args.batch_size,
        workers,
        seed: args.seed,
        augment: Augment::Train {
            crop: args.crop,
            flip: true,
            lighting,
        },
        output,
        verify: args.verify,
        release_pages: args.release_pages,
        ..LoaderConfig::default()
    };
    let mut loader = Loader::new(dataset.clone(), config).context("starting the pipeline")?;
    let mut digest = (!args.no_digest).then(crc32fast::Hasher::new);
    let mut images = 0u64;
    let mut input_bytes = 0u64;
    let mut output_bytes = 0u64;
    let mut started = Instant::now();
    let mut timed = false;
    let mut memory = None;
    for i in 0..total {
        let Some(batch) = loader.next() else {
            break;
        };
        let batch = batch.context("the pipeline failed")?;
        Memory::sample(&mut memory);
        if let Some(h) = digest.as_mut() {
            match (batch.pixels_u8(), batch.pixels_f32()) {
                (Some(p), _) => h.update(p),
                (None, Some(p)) => {
                    for v in p {
                        h.update(&v.to_le_bytes());
                    }
                }
                (None, None) => {}
            }
            for l in batch.labels() {
                h.update(&l.to_le_bytes());
            }
            for v in batch.lighting().iter().flatten() {
                h.update(&v.to_le_bytes());
            }
        }
        if i < args.warmup {
            if i + 1 == args.warmup {
                // the clock restarts once the warm-up batches are through
                started = Instant::now();
            }
            continue;
        }
        timed = true;
        images += batch.images() as u64;
        output_bytes += batch.pixels_u8().map_or(0, |p| p.len() as u64)
            + batch.pixels_f32().map_or(0, |p| 4 * p.len() as u64);
        for &idx in batch.indices() {
            let record = dataset
                .record(usize::try_from(idx).unwrap_or(usize::MAX))
                .context("record lookup")?;
            input_bytes += record.payload.len() as u64;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if !timed {
        bail!("the dataset produced no batches to time");
    }
    let st = loader.stats();
    let report = Report {
        shards: args.shards.display().to_string(),
        codec: dataset.codec().to_string(),
        records: dataset.len(),
        side: dataset.geometry().side,
        crop: args.crop,
        output: match args.output {
            OutputForm::U8 => "u8",
            OutputForm::F32 => "f32",
        },
        layout: match (args.output, args.layout) {
            (OutputForm::F32, _) | (_, LayoutArg::Nchw) => "nchw",
            (_, LayoutArg::Nhwc) => "nhwc",
        },
        batch_size: args.batch_size as u64,
        workers: workers as u64,
        warmup_batches: args.warmup,
        batches: args.batches,
        images,
        seconds,
        images_per_s: images as f64 / seconds.max(1e-9),
        input_mb_per_s: input_bytes as f64 / 1e6 / seconds.max(1e-9),
        output_mb_per_s: output_bytes as f64 / 1e6 / seconds.max(1e-9),
        stage_seconds: StageSeconds {
            verify: st.verify.as_secs_f64(),
            decode: st.decode.as_secs_f64(),
            augment: st.augment.as_secs_f64(),
            consumer_wait: st.consumer_wait.as_secs_f64(),
        },
        memory,
        release_pages: args.release_pages,
        digest: digest.map(|h| format!("{:08x}", h.finalize())),
    };
    drop(loader);
    if args.json {
        sv_cli::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        sv_cli::outln!(
            "{} ({} codec, {} records): {} batches of {} -> {} {} crops of {}",
            report.shards,
            report.codec,
            report.records,
            report.batches,
            report.batch_size,
            report.output,
            report.layout,
            report.crop
        );
        sv_cli::outln!(
            "{:.0} images/s, {:.1} MB/s in, {:.1} MB/s out, {} workers, {:.3} s",
            report.images_per_s,
            report.input_mb_per_s,
            report.output_mb_per_s,
            report.workers,
            report.seconds
        );
        sv_cli::outln!(
            "stages (CPU s, all batches): verify {:.3}, decode {:.3}, augment {:.3}; consumer waited {:.3}",
            report.stage_seconds.verify,
            report.stage_seconds.decode,
            report.stage_seconds.augment,
            report.stage_seconds.consumer_wait
        );
        if let Some(m) = &report.memory {
            sv_cli::outln!(
                "peak resident memory {:.1} MiB (anonymous {:.1} MiB, file-backed {:.1} MiB{})",
                m.peak_rss_mib,
                m.peak_anon_mib,
                m.peak_file_mib,
                if report.release_pages {
                    ", pages released after use"
                } else {
                    ""
                }
            );
        }
        if let Some(d) = &report.digest {
            sv_cli::outln!("digest {d}");
        }
    }
    Ok(0)
}
