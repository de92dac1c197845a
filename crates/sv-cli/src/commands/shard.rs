//! `supervision shard build | verify | inspect | export`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use serde::Serialize;
use sv_build::{BuildConfig, InputSpec, Progress};
use sv_core::Split;
use sv_shard::{Codec, Dataset, Subsampling};

use sv_cli::progress;

/// Shard dataset commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Decode every image, resize its shorter side to --size, keep the centre square,
    /// and write checksummed, memory-mappable shards plus manifest.json.
    ///
    /// Train: --input is the class-folder tree (train/<wnid>/*.JPEG). Val: either the same
    /// tree, or a flat folder with a labels file (LOC_val_solution.csv or `filename wnid`
    /// lines), found beside the folder when --labels is not given; pass --classes-from
    /// with the train dataset so val labels use train's class indices.
    ///
    /// Files that cannot be used (unreadable, truncated, not an image, too large) are
    /// skipped and listed in OUTPUT/rejects.jsonl. Output is byte-identical for any
    /// --workers. A build that is killed resumes when the same command is run again.
    Build(BuildArgs),
    /// Check the manifest, every shard's checksum and every record's checksum.
    Verify(VerifyArgs),
    /// Print what a dataset holds (counts per class, codec, sizes); draw a contact sheet.
    Inspect(InspectArgs),
    /// Write records back out as PNG files named <index>_<label>_<wnid>.png.
    Export(ExportArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CodecArg {
    /// Pixels as they are: 196,608 bytes per 256px image, zero decode cost when read.
    Raw,
    /// JPEG: about 8x smaller, decoded when read.
    Jpeg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SubsamplingArg {
    /// Chroma at half resolution both ways.
    #[value(name = "4:2:0")]
    S420,
    /// Full-resolution chroma.
    #[value(name = "4:4:4")]
    S444,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SplitArg {
    Train,
    Val,
}

#[derive(ClapArgs, Debug)]
pub struct BuildArgs {
    /// The split's images: a class-folder tree, or a flat folder with a labels file.
    #[arg(long)]
    input: PathBuf,
    /// The dataset folder to write (created if missing).
    #[arg(long)]
    output: PathBuf,
    /// Which split this is (recorded in the manifest and shard names).
    #[arg(long, value_enum, default_value = "train")]
    split: SplitArg,
    /// Labels for a flat folder: LOC_val_solution.csv or `filename wnid` lines.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Take the class list (wnids, names, indices) from this existing dataset.
    #[arg(long, value_name = "SHARDS")]
    classes_from: Option<PathBuf>,
    /// Record codec.
    #[arg(long, value_enum, default_value = "raw")]
    codec: CodecArg,
    /// JPEG quality (jpeg codec).
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,
    /// JPEG chroma subsampling (jpeg codec): 4:2:0 halves chroma both ways, as libjpeg
    /// and ImageNet's own files; 4:4:4 keeps it whole.
    #[arg(long, value_enum, default_value = "4:2:0")]
    subsampling: SubsamplingArg,
    /// Decoding threads (default: all cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Side of the stored square images.
    #[arg(long, default_value_t = sv_core::DEFAULT_SIDE)]
    size: u32,
    /// Largest shard file, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_shard_mib: u64,
    /// Fail on the first file that cannot be used instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Replace a dataset in --output that was built from other inputs or settings.
    #[arg(long)]
    force: bool,
}

#[derive(ClapArgs, Debug)]
pub struct VerifyArgs {
    /// The dataset folder.
    dir: PathBuf,
    /// Threads (default: all cores).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(ClapArgs, Debug)]
pub struct InspectArgs {
    /// The dataset folder.
    dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Draw a contact sheet of sample records to this PNG: a row per class (up to 16
    /// classes), its first records left to right.
    #[arg(long, value_name = "FILE.png")]
    sheet: Option<PathBuf>,
    /// Records per row of the contact sheet.
    #[arg(long, default_value_t = 8)]
    per_class: usize,
}

#[derive(ClapArgs, Debug)]
pub struct ExportArgs {
    /// The dataset folder.
    dir: PathBuf,
    /// Where to write the PNG files (created if missing).
    #[arg(long)]
    output: PathBuf,
    /// Export at most this many records (from the start, or of --indices).
    #[arg(long)]
    limit: Option<usize>,
    /// Export these record indices (comma-separated).
    #[arg(long, value_delimiter = ',')]
    indices: Vec<usize>,
}

/// Run a shard command.
pub fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Build(a) => build(a),
        Cmd::Verify(a) => verify(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Export(a) => export(a),
    }
}

fn build(a: BuildArgs) -> anyhow::Result<i32> {
    let classes = match &a.classes_from {
        Some(dir) => Some(
            sv_shard::Manifest::load(dir)
                .with_context(|| format!("reading the class list of {}", dir.display()))?
                .classes,
        ),
        None => None,
    };
    let config = BuildConfig {
        input: InputSpec {
            input: a.input.clone(),
            labels: a.labels.clone(),
            classes,
        },
        output: a.output.clone(),
        split: match a.split {
            SplitArg::Train => Split::Train,
            SplitArg::Val => Split::Val,
        },
        codec: match a.codec {
            CodecArg::Raw => Codec::Raw,
            CodecArg::Jpeg => Codec::Jpeg,
        },
        jpeg_quality: a.quality,
        jpeg_subsampling: match a.subsampling {
            SubsamplingArg::S420 => Subsampling::S420,
            SubsamplingArg::S444 => Subsampling::S444,
        },
        side: a.size,
        workers: a.workers.unwrap_or_else(num_cpus::get).max(1),
        max_shard_bytes: a.max_shard_mib.saturating_mul(1 << 20),
        strict: a.strict,
        force: a.force,
    };
    let started = Instant::now();
    let bar = progress::bar(0, "images");
    let on_progress = |p: Progress| match p {
        Progress::Start { total, done } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.reset_eta();
            if done > 0 {
                bar.println(format!(
                    "resuming: {done} of {total} images already in shards"
                ));
            }
        }
        Progress::Image { done, rejected } => {
            bar.set_position(done as u64);
            if rejected > 0 {
                bar.set_message(format!("{rejected} rejected"));
            }
        }
        Progress::Shard { shards } => bar.println(format!("shard {shards} written")),
    };
    let result = sv_build::build(&config, &on_progress);
    bar.finish_and_clear();
    let summary = result.with_context(|| format!("building {}", a.output.display()))?;
    let m = &summary.manifest;
    let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
    if summary.up_to_date {
        sv_cli::outln!(
            "{} is up to date: {} records in {} shards ({}), {} rejected",
            a.output.display(),
            m.records,
            m.shards.len(),
            human_bytes(bytes),
            summary.rejects.len()
        );
        return Ok(0);
    }
    let secs = started.elapsed().as_secs_f64();
    let processed = summary.inputs.saturating_sub(summary.resumed_inputs);
    sv_cli::outln!(
        "built {}: {} records in {} {} shards ({}), {} classes, {} of {} files rejected, \
         {:.1} s ({:.0} images/s){}",
        a.output.display(),
        m.records,
        m.shards.len(),
        m.codec,
        human_bytes(bytes),
        m.classes.len(),
        summary.rejects.len(),
        summary.inputs,
        secs,
        processed as f64 / secs.max(1e-9),
        if summary.resumed_shards > 0 {
            format!(", resumed after {} shards", summary.resumed_shards)
        } else {
            String::new()
        }
    );
    if !summary.rejects.is_empty() {
        for r in summary.rejects.iter().take(5) {
            sv_cli::outln!("  rejected {}: {}", r.path, r.reason);
        }
        if summary.rejects.len() > 5 {
            sv_cli::outln!("  ... {} more", summary.rejects.len() - 5);
        }
        sv_cli::outln!(
            "  all rejects: {}",
            a.output.join(sv_build::REJECTS_FILE).display()
        );
    }
    Ok(0)
}

fn verify(a: VerifyArgs) -> anyhow::Result<i32> {
    let manifest = sv_shard::Manifest::load(&a.dir)?;
    let total: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
    let bar = progress::bar(total, "bytes");
    let report =
        sv_shard::verify::verify_dataset(&a.dir, a.workers.unwrap_or_else(num_cpus::get), &|b| {
            bar.inc(b)
        })?;
    bar.finish_and_clear();
    for p in &report.leftovers {
        eprintln!(
            "note: {} is a leftover of an interrupted build (resume it, or delete it)",
            p.display()
        );
    }
    if report.ok() {
        sv_cli::outln!(
            "ok: {} records in {} shards ({}) verified",
            report.records,
            report.shards,
            human_bytes(report.bytes)
        );
        Ok(0)
    } else {
        for p in &report.problems {
            eprintln!("damaged: {p}");
        }
        eprintln!(
            "error: {} problem(s) found in {}",
            report.problems.len(),
            a.dir.display()
        );
        Ok(1)
    }
}

#[derive(Serialize)]
struct ClassCount<'a> {
    label: usize,
    wnid: &'a str,
    name: &'a str,
    records: u64,
}

#[derive(Serialize)]
struct Inspection<'a> {
    dir: &'a Path,
    split: String,
    codec: String,
    jpeg_quality: Option<u8>,
    jpeg_subsampling: Option<Subsampling>,
    side: u32,
    records: u64,
    shards: usize,
    bytes: u64,
    bytes_per_record: f64,
    classes: Vec<ClassCount<'a>>,
}

fn inspect(a: InspectArgs) -> anyhow::Result<i32> {
    let ds = Dataset::open(&a.dir)?;
    let m = ds.manifest();
    let mut counts = vec![0u64; m.classes.len()];
    for i in 0..ds.len() {
        counts[ds.label(i)? as usize] += 1;
    }
    let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
    let report = Inspection {
        dir: &a.dir,
        split: m.split.to_string(),
        codec: m.codec.to_string(),
        jpeg_quality: m.jpeg_quality,
        // Manifests from before the field hold 4:4:4 records.
        jpeg_subsampling: (m.codec == Codec::Jpeg)
            .then(|| m.jpeg_subsampling.unwrap_or(Subsampling::S444)),
        side: m.side,
        records: m.records,
        shards: m.shards.len(),
        bytes,
        bytes_per_record: if m.records == 0 {
            0.0
        } else {
            bytes as f64 / m.records as f64
        },
        classes: m
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| ClassCount {
                label: i,
                wnid: &c.wnid,
                name: &c.name,
                records: counts[i],
            })
            .collect(),
    };
    if a.json {
        sv_cli::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        sv_cli::outln!("dataset   {}", a.dir.display());
        sv_cli::outln!("split     {}", report.split);
        match (report.jpeg_quality, report.jpeg_subsampling) {
            (Some(q), Some(s)) => sv_cli::outln!("codec     {} (quality {q}, {s})", report.codec),
            (Some(q), None) => sv_cli::outln!("codec     {} (quality {q})", report.codec),
            _ => sv_cli::outln!("codec     {}", report.codec),
        }
        sv_cli::outln!("images    {0}x{0}x3 uint8 (HWC RGB)", report.side);
        sv_cli::outln!("records   {}", report.records);
        sv_cli::outln!(
            "shards    {} ({}, {} per record)",
            report.shards,
            human_bytes(report.bytes),
            human_bytes(report.bytes_per_record as u64)
        );
        sv_cli::outln!("classes   {}", report.classes.len());
        for c in &report.classes {
            sv_cli::outln!(
                "  {:>5}  {:<10} {:>8}  {}",
                c.label,
                c.wnid,
                c.records,
                c.name
            );
        }
    }
    if let Some(sheet) = &a.sheet {
        let (rows, cols) = contact_sheet(&ds, sheet, a.per_class.max(1))?;
        if !a.json {
            sv_cli::outln!(
                "contact sheet: {} ({rows} classes x up to {cols} records)",
                sheet.display()
            );
        }
    }
    Ok(0)
}

/// A grid: one row per class (the first 16), its first `per_class` records.
fn contact_sheet(ds: &Dataset, path: &Path, per_class: usize) -> anyhow::Result<(usize, usize)> {
    let classes = ds.classes().len().min(16);
    let mut picks: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for i in 0..ds.len() {
        let l = ds.label(i)? as usize;
        if l < classes && picks[l].len() < per_class {
            picks[l].push(i);
        }
    }
    let side = ds.geometry().side;
    let tile = side.min(128);
    let gap = 2;
    let width = per_class as u32 * (tile + gap) + gap;
    let height = classes as u32 * (tile + gap) + gap;
    let mut sheet =
        image::RgbImage::from_pixel(width.max(1), height.max(1), image::Rgb([32, 32, 32]));
    let mut scratch = Vec::new();
    for (row, ids) in picks.iter().enumerate() {
        for (col, &i) in ids.iter().enumerate() {
            let rec = ds.record(i)?;
            let px = rec.pixels(&mut scratch)?.to_vec();
            let img = image::RgbImage::from_raw(side, side, px)
                .context("record has the wrong size for its geometry")?;
            let small = if tile == side {
                img
            } else {
                image::imageops::resize(&img, tile, tile, image::imageops::FilterType::Triangle)
            };
            let x = gap + col as u32 * (tile + gap);
            let y = gap + row as u32 * (tile + gap);
            image::imageops::replace(&mut sheet, &small, i64::from(x), i64::from(y));
        }
    }
    sheet
        .save(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((classes, per_class))
}

fn export(a: ExportArgs) -> anyhow::Result<i32> {
    let ds = Dataset::open(&a.dir)?;
    let mut indices: Vec<usize> = if a.indices.is_empty() {
        (0..ds.len()).collect()
    } else {
        a.indices.clone()
    };
    if let Some(limit) = a.limit {
        indices.truncate(limit);
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= ds.len()) {
        bail!(
            "record index {bad} is out of range: {} holds {} records",
            a.dir.display(),
            ds.len()
        );
    }
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let side = ds.geometry().side;
    let bar = progress::bar(indices.len() as u64, "images");
    let mut scratch = Vec::new();
    for &i in &indices {
        let rec = ds.record(i)?;
        rec.verify()?;
        let px = rec.pixels(&mut scratch)?.to_vec();
        let wnid = ds
            .classes()
            .get(rec.label as usize)
            .map_or("unknown", |c| c.wnid.as_str());
        let name = format!("{i:08}_{}_{wnid}.png", rec.label);
        let path = a.output.join(&name);
        image::RgbImage::from_raw(side, side, px)
            .context("record has the wrong size for its geometry")?
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    sv_cli::outln!(
        "exported {} records to {}",
        indices.len(),
        a.output.display()
    );
    Ok(0)
}

/// Bytes as B, KiB, MiB or GiB.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
