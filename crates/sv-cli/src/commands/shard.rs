//! `supervision shard build | merge | verify | inspect | export`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use serde::Serialize;
use sv_build::{BuildConfig, InputSpec, Progress};
use sv_core::Split;
use sv_shard::{Codec, Dataset, Subsampling};

use sv_cli::progress::{self, human_bytes};

/// Shard dataset commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Decode every image, resize its shorter side to --size, keep the centre square,
    /// and write checksummed, memory-mappable shards plus manifest.json.
    ///
    /// Train: --input is the class-folder tree (train/<wnid>/*.JPEG), or ImageNet's
    /// ILSVRC2012_img_train.tar (a tar of class tars) read in place. Val: the same tree,
    /// or a flat folder or tar (ILSVRC2012_img_val.tar) labelled by the devkit
    /// (--devkit ILSVRC2012_devkit_t12.tar.gz) or a labels file (LOC_val_solution.csv or
    /// `filename wnid` lines, found beside the input when --labels is not given); pass
    /// --classes-from with the train dataset so val labels use train's class indices.
    ///
    /// Files that cannot be used (unreadable, truncated, not an image, too large) are
    /// skipped and listed in OUTPUT/rejects.jsonl. Output is byte-identical for any
    /// --workers. A build that is killed resumes when the same command is run again.
    Build(BuildArgs),
    /// Join the parts of a build split with --part K/N into one dataset: the same
    /// records, labels and order as one build. Shards are hard-linked from the parts
    /// (copied when a part is on another filesystem). Parts of other inputs or
    /// settings, missing or repeated parts are refused by name.
    Merge(MergeArgs),
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
    /// The split's images: a class-folder tree or a flat folder, or a tar archive of
    /// either (ILSVRC2012_img_train.tar, a tar of class tars, is read as its tree).
    ///
    /// Or ImageNet as the Hugging Face hub shares it: WebDataset tars (one or several
    /// files, a folder of them, or a brace pattern such as
    /// 'imagenet1k-train-{0000..1023}.tar') or parquet files (files, a folder, or a
    /// glob such as 'train-*.parquet'), found from their content (see --input-format).
    #[arg(long, required = true, num_args = 1.., value_name = "INPUT")]
    input: Vec<PathBuf>,
    /// What --input holds, instead of finding it from the content: folder, tar
    /// (ILSVRC2012's tars), wds (WebDataset tars) or parquet.
    #[arg(long, value_name = "FORMAT", value_parser = parse_input_format)]
    input_format: Option<sv_build::hub::InputFormat>,
    /// WebDataset: the member extension, or the field of the sample's .json, that
    /// holds the class index (default: cls).
    #[arg(long, value_name = "KEY")]
    label_key: Option<String>,
    /// Parquet: the column that holds the class index (default: label).
    #[arg(long, value_name = "COLUMN")]
    label_column: Option<String>,
    /// WebDataset and parquet: the class list, one `wnid name` line per class in
    /// class-index order (else the parquet file's ClassLabel names, --classes-from,
    /// --devkit, or LOC_synset_mapping.txt beside the input).
    #[arg(long, value_name = "FILE")]
    class_names: Option<PathBuf>,
    /// The dataset folder to write (created if missing).
    #[arg(long)]
    output: PathBuf,
    /// Which split this is (recorded in the manifest and shard names).
    #[arg(long, value_enum, default_value = "train")]
    split: SplitArg,
    /// Labels for a flat folder: LOC_val_solution.csv or `filename wnid` lines.
    #[arg(long, conflicts_with = "devkit")]
    labels: Option<PathBuf>,
    /// The ILSVRC2012 devkit: ILSVRC2012_devkit_t12.tar.gz, its extracted folder, or
    /// (given twice) its data/meta.mat and data/ILSVRC2012_validation_ground_truth.txt.
    /// Labels a flat val input through meta.mat; names the classes with its `words`.
    #[arg(long, value_name = "DEVKIT")]
    devkit: Vec<PathBuf>,
    /// Build only part K of N contiguous slices of the record order (K counts from 0),
    /// for a build split across machines; join the parts with `shard merge`.
    #[arg(long, value_name = "K/N", value_parser = parse_part)]
    part: Option<sv_build::Part>,
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
    /// Decoding threads (default: all cores; 1 to 1024).
    #[arg(long, value_parser = sv_cli::args::count_up_to(sv_build::MAX_WORKERS))]
    workers: Option<usize>,
    /// Side of the stored square images.
    #[arg(long, default_value_t = sv_core::DEFAULT_SIDE)]
    size: u32,
    /// Largest shard file, in MiB: no shard is larger (1 to 65536).
    #[arg(long, default_value_t = 1024,
          value_parser = sv_cli::args::count_up_to(sv_build::MAX_SHARD_BYTES >> 20))]
    max_shard_mib: u64,
    /// Fail on the first file that cannot be used instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Stop with an error once more than this fraction of the input files (0 to 1)
    /// is rejected: a real ImageNet build rejects almost none, so many rejects mean a
    /// wrong folder, layout or labels. 1 builds whatever can be used.
    #[arg(long, value_name = "FRACTION", default_value_t = sv_build::DEFAULT_MAX_REJECT_FRACTION,
          value_parser = parse_fraction)]
    max_reject_fraction: f64,
    /// Replace a dataset in --output that was built from other inputs or settings:
    /// the new one is built beside it and moved into place once whole (so a failed
    /// or full-disk build leaves the old one); cut short, the same command resumes.
    #[arg(long)]
    force: bool,
    /// Also record a CRC-32 of every input's content, not only its size and
    /// modification time, so a file rewritten in place is noticed. Checking a later
    /// run against it reads every input again.
    #[arg(long)]
    hash_inputs: bool,
}

#[derive(ClapArgs, Debug)]
pub struct MergeArgs {
    /// The part folders (each built with --part K/N), in any order.
    #[arg(required = true, value_name = "PART")]
    parts: Vec<PathBuf>,
    /// The dataset folder to write (created if missing; must hold no other files).
    #[arg(long)]
    output: PathBuf,
    /// Replace a dataset in --output: the merged one is written beside it and moved
    /// into place once whole, then the old one's files (only a build's own) are
    /// removed.
    #[arg(long)]
    force: bool,
}

#[derive(ClapArgs, Debug)]
pub struct VerifyArgs {
    /// The dataset folder.
    dir: PathBuf,
    /// Threads (default: all cores; 1 to 1024).
    #[arg(long, value_parser = sv_cli::args::count_up_to(sv_build::MAX_WORKERS))]
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
    /// Records per row of the contact sheet (at most what fits in a sheet 16,384
    /// pixels wide).
    #[arg(long, default_value_t = 8, value_parser = sv_cli::args::at_least_one::<usize>)]
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
    // inspect and export read shards through memory maps: a shard truncated under
    // them by another program ends in a message naming it, not a bare bus error.
    sv_shard::report_truncated_shards();
    match cmd {
        Cmd::Build(a) => build(a),
        Cmd::Merge(a) => merge(a),
        Cmd::Verify(a) => verify(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Export(a) => export(a),
    }
}

fn parse_input_format(s: &str) -> Result<sv_build::hub::InputFormat, String> {
    s.parse()
}

fn build(a: BuildArgs) -> anyhow::Result<i32> {
    if a.workers == Some(0) {
        bail!("--workers 0: the build needs at least 1 decoding thread");
    }
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
            input: a.input[0].clone(),
            labels: a.labels.clone(),
            devkit: a.devkit.clone(),
            classes,
            hub: sv_build::hub::HubOptions {
                more_inputs: a.input[1..].to_vec(),
                format: a.input_format,
                label_key: a.label_key.clone(),
                label_column: a.label_column.clone(),
                class_names: a.class_names.clone(),
            },
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
        workers: a
            .workers
            .unwrap_or_else(sv_cli::args::default_workers)
            .clamp(1, sv_build::MAX_WORKERS),
        max_shard_bytes: a.max_shard_mib.saturating_mul(1 << 20),
        strict: a.strict,
        max_reject_fraction: a.max_reject_fraction,
        force: a.force,
        hash_inputs: a.hash_inputs,
        part: a.part,
    };
    let started = Instant::now();
    let bar = progress::bar("shard build", 0, "images");
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
    let summary = result.map_err(|e| build_error(e, &a))?;
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
        print_ignored(&summary, &a.output)?;
        return Ok(0);
    }
    if let Some(why) = &summary.rebuilt_because {
        sv_cli::outln!("rebuilt from the first shard that no longer held: {why}");
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
    print_ignored(&summary, &a.output)?;
    Ok(0)
}

fn merge(a: MergeArgs) -> anyhow::Result<i32> {
    let summary = sv_build::merge(&sv_build::MergeConfig {
        parts: a.parts.clone(),
        output: a.output.clone(),
        force: a.force,
    })
    .map_err(|e| {
        let advice = match &e {
            sv_build::BuildError::Occupied { .. } => "; pass --force to replace it",
            _ => "",
        };
        anyhow::anyhow!(
            "merging into {}: {:#}{advice}",
            a.output.display(),
            anyhow::Error::new(e)
        )
    })?;
    let m = &summary.manifest;
    let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
    if summary.up_to_date {
        sv_cli::outln!(
            "{} is up to date: {} parts merged, {} records in {} shards ({}), {} rejected",
            a.output.display(),
            summary.parts,
            m.records,
            m.shards.len(),
            human_bytes(bytes),
            summary.rejects
        );
        return Ok(0);
    }
    sv_cli::outln!(
        "merged {} parts into {}: {} records in {} shards ({}; {} linked, {} copied), {} rejected",
        summary.parts,
        a.output.display(),
        m.records,
        m.shards.len(),
        human_bytes(bytes),
        summary.linked,
        summary.copied,
        summary.rejects
    );
    Ok(0)
}

fn parse_part(text: &str) -> Result<sv_build::Part, String> {
    sv_build::Part::parse(text)
}

/// A fraction, `0` to `1`.
fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        Ok(_) => Err(format!("`{text}` is not between 0 and 1")),
        Err(_) => Err(format!("`{text}` is not a number (a fraction, 0 to 1)")),
    }
}

/// The library's error with the command's context, and advice in flag terms.
fn build_error(e: sv_build::BuildError, a: &BuildArgs) -> anyhow::Error {
    let advice = match &e {
        sv_build::BuildError::Occupied { holds, .. } => match holds {
            sv_build::Occupant::InterruptedBuild => "; or pass --force to start over",
            sv_build::Occupant::OtherDataset => "; pass --force to replace it",
            sv_build::Occupant::OtherFiles => {
                "; or pass --force to build beside the files there (they are kept)"
            }
        },
        sv_build::BuildError::TooManyRejects { .. } => {
            "; check --input and the labels, or pass --max-reject-fraction 1 to build what \
             can be used (running the same command again resumes)"
        }
        _ => "",
    };
    let text = format!("{:#}", anyhow::Error::new(e));
    anyhow::anyhow!("building {}: {text}{advice}", a.output.display())
}

/// Entries found in the input and not read, with the reason (a few, then a count).
fn print_ignored(summary: &sv_build::BuildSummary, out: &Path) -> anyhow::Result<()> {
    if summary.ignored.is_empty() {
        return Ok(());
    }
    sv_cli::outln!("{} entries of the input ignored:", summary.ignored.len());
    for i in summary.ignored.iter().take(5) {
        sv_cli::outln!("  ignored {}: {}", i.path, i.reason);
    }
    if summary.ignored.len() > 5 {
        sv_cli::outln!(
            "  ... {} more, listed in {}",
            summary.ignored.len() - 5,
            out.join(sv_build::BUILD_FILE).display()
        );
    }
    Ok(())
}

fn verify(a: VerifyArgs) -> anyhow::Result<i32> {
    let manifest = sv_shard::Manifest::load(&a.dir)?;
    let total: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
    let bar = progress::bar("shard verify", total, "bytes");
    let report = sv_shard::verify::verify_dataset(
        &a.dir,
        a.workers.unwrap_or_else(sv_cli::args::default_workers),
        &|b| bar.inc(b),
    )?;
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
        let (rows, cols) = contact_sheet(&ds, sheet, a.per_class)?;
        if !a.json {
            sv_cli::outln!(
                "contact sheet: {} ({rows} classes x up to {cols} records)",
                sheet.display()
            );
        }
    }
    Ok(0)
}

/// The widest (and tallest) contact sheet drawn, in pixels: a PNG viewers open, and
/// a bounded allocation (16384 x 2082 RGB is about 100 MB).
const MAX_SHEET_SIDE: u64 = 16384;
/// Classes drawn on a contact sheet (a row each).
const SHEET_CLASSES: usize = 16;

/// A grid: one row per class (the first 16), its first `per_class` records. The
/// sheet is as wide as the fullest row, and refused (before anything is drawn) when
/// that row would not fit in [`MAX_SHEET_SIDE`] pixels.
fn contact_sheet(ds: &Dataset, path: &Path, per_class: usize) -> anyhow::Result<(usize, usize)> {
    sv_core::fs::check_write_target(path)
        .with_context(|| format!("--sheet {} cannot be written", path.display()))?;
    let classes = ds.classes().len().min(SHEET_CLASSES);
    let mut picks: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for i in 0..ds.len() {
        let l = ds.label(i)? as usize;
        if l < classes && picks[l].len() < per_class {
            picks[l].push(i);
        }
    }
    let cols = picks.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let side = ds.geometry().side;
    let tile = side.min(128);
    let gap = 2u32;
    let cell = u64::from(tile + gap);
    let extent = |n: usize| (n as u64).checked_mul(cell)?.checked_add(u64::from(gap));
    let fits = |px: Option<u64>| px.filter(|&px| px <= MAX_SHEET_SIDE);
    let (Some(width), Some(height)) = (fits(extent(cols)), fits(extent(classes.max(1)))) else {
        bail!(
            "--per-class {per_class}: a row of {cols} records of {tile} pixels would make \
             the contact sheet wider than {MAX_SHEET_SIDE} pixels; at most {} records fit \
             in a row",
            (MAX_SHEET_SIDE - u64::from(gap)) / cell
        );
    };
    // Both within MAX_SHEET_SIDE, so they fit in u32.
    let mut sheet =
        image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([32, 32, 32]));
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
            let x = u64::from(gap) + col as u64 * cell;
            let y = u64::from(gap) + row as u64 * cell;
            image::imageops::replace(&mut sheet, &small, x as i64, y as i64);
        }
    }
    write_png(path, &sheet)?;
    Ok((classes, cols))
}

/// Encode `img` as PNG and write it atomically (nothing half-written is left behind).
fn write_png(path: &Path, img: &image::RgbImage) -> anyhow::Result<()> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .with_context(|| format!("encoding {}", path.display()))?;
    sv_core::fs::write_atomic(path, &png).with_context(|| format!("writing {}", path.display()))
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
    let bar = progress::bar("shard export", indices.len() as u64, "images");
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
        let img = image::RgbImage::from_raw(side, side, px)
            .context("record has the wrong size for its geometry")?;
        write_png(&path, &img)?;
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
