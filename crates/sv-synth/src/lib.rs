//! A small synthetic ImageNet look-alike, so every command can be tried and tested
//! without ImageNet. [`generate`] writes ImageNet's Kaggle layout:
//!
//! ```text
//! OUT/train/<wnid>/<wnid>_<i>.JPEG        i = 1..=per_class
//! OUT/val/ILSVRC2012_val_<8 digits>.JPEG  flat, numbered from 1, classes shuffled
//! OUT/LOC_val_solution.csv                ImageId,PredictionString  (wnid xmin ymin xmax ymax)
//! OUT/LOC_synset_mapping.txt              "<wnid> <name>" per line, in class order
//! ```
//!
//! With `archives`, also the same images as ImageNet's three downloads (see
//! [`archives`]).
//!
//! Each class has a learnable signature: a shape (10 kinds), a texture (5 kinds) and
//! a palette (a hue from a golden-ratio sequence, with a complementary or dark second
//! colour), drawn at a random position, scale, stretch and rotation over a random
//! smooth background with distractor blobs and noise. Sides run from about 150 to
//! 900 pixels with ImageNet-like aspect ratios.
//!
//! ImageNet's file quirks are reproduced: a few grayscale JPEGs and a few CMYK JPEGs
//! (Adobe convention) in both splits, and exactly one PNG file named `.JPEG` in
//! train (as ImageNet's `n02105855_2933.JPEG`).
//!
//! Deterministic: every image draws from an RNG keyed by (seed, split, image index),
//! so the files are byte-identical for a seed whatever the thread count.
#![warn(missing_docs)]

pub mod archives;
mod draw;
pub mod hub;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use image::ImageEncoder as _;
use rand::Rng as _;
use rand::seq::SliceRandom as _;
use sv_core::ClassInfo;

/// Most classes [`generate`] writes: the class signatures (shape, texture, palette)
/// stay told apart well past ImageNet's 1,000.
pub const MAX_CLASSES: u32 = 10_000;

/// Most images [`generate`] writes per split: about four ImageNet training sets
/// (1,281,167 images). Every image is planned in memory first (about 150 bytes
/// each), so the count bounds memory as well as time.
pub const MAX_IMAGES: u64 = 5_000_000;

/// Most worker threads [`SynthConfig::threads`] may ask for.
pub const MAX_THREADS: usize = 1024;

/// Everything `generate` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthConfig {
    /// Number of classes (1..=[`MAX_CLASSES`]).
    pub classes: u32,
    /// Training images per class (at least 1; at most [`MAX_IMAGES`] in all).
    pub per_class: u32,
    /// Validation images per class (0 writes an empty val folder and csv; at most
    /// [`MAX_IMAGES`] in all).
    pub val_per_class: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Smallest shorter side in pixels (at least 16).
    pub min_side: u32,
    /// Largest longer side in pixels (at least `min_side`).
    pub max_side: u32,
    /// Worker threads (at most [`MAX_THREADS`]); 0 uses every core. Never changes the
    /// output.
    pub threads: usize,
    /// Also write the three ILSVRC2012 archives (see [`archives`]).
    pub archives: bool,
}

impl SynthConfig {
    /// Check every setting against its range (what [`generate`] does first), so a
    /// caller can refuse a configuration before touching the output folder.
    pub fn validate(&self) -> Result<(), SynthError> {
        check(self)
    }
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            classes: 10,
            per_class: 20,
            val_per_class: 10,
            seed: 0,
            min_side: 150,
            max_side: 900,
            threads: 0,
            archives: false,
        }
    }
}

/// What `generate` wrote. Paths are relative to the output directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSummary {
    /// The classes, in index order (sorted wnids).
    pub classes: Vec<ClassInfo>,
    /// Training images written.
    pub train_images: u64,
    /// Validation images written.
    pub val_images: u64,
    /// Bytes of all image files.
    pub image_bytes: u64,
    /// Grayscale JPEGs.
    pub grayscale: Vec<PathBuf>,
    /// CMYK JPEGs.
    pub cmyk: Vec<PathBuf>,
    /// PNG files named `.JPEG`.
    pub png: Vec<PathBuf>,
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A configuration value is out of range.
    #[error("invalid synth configuration: {0}")]
    InvalidConfig(String),
    /// A file or directory could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file written atomically (`sv_core::fs`) could not be written.
    #[error(transparent)]
    Fs(#[from] sv_core::fs::FsError),
    /// An encoder refused an image (should not happen for generated pixels).
    #[error("cannot encode {path}: {reason}")]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// The encoder's message.
        reason: String,
    },
}

/// The synthetic wnid of class `index`: `n9` and 7 digits, so sorted wnids are in
/// index order and never collide with a real ImageNet wnid (those start `n0` / `n1`).
pub fn wnid(index: u32) -> String {
    format!("n9{index:07}")
}

/// The class list for `classes` classes: fake wnids and names that describe the
/// class signature, e.g. `n9000003 green checkered ring, synthetic class 3`.
pub fn class_list(classes: u32) -> Vec<ClassInfo> {
    (0..classes)
        .map(|c| ClassInfo {
            wnid: wnid(c),
            name: format!("{}, synthetic class {c}", draw::Signature::of(c).name()),
        })
        .collect()
}

/// The Kaggle name of validation image `number` (1-based).
pub fn val_name(number: u64) -> String {
    format!("ILSVRC2012_val_{number:08}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rgb,
    Gray,
    Cmyk,
    Png,
}

#[derive(Clone, Debug)]
struct Job {
    split: u64,
    /// Index within the split: the RNG key.
    index: u64,
    class: u32,
    rel: PathBuf,
    kind: Kind,
}

const TRAIN: u64 = 1;
const VAL: u64 = 2;
/// `stream_rng` purposes.
const STREAM_VAL_ORDER: u64 = 0x5641_4C4F;
const STREAM_QUIRKS: u64 = 0x5155_524B;

fn check(config: &SynthConfig) -> Result<(), SynthError> {
    let bad = |m: String| Err(SynthError::InvalidConfig(m));
    if !(1..=MAX_CLASSES).contains(&config.classes) {
        return bad(format!(
            "classes {} (want 1..={MAX_CLASSES})",
            config.classes
        ));
    }
    if config.per_class == 0 {
        return bad("per_class 0 (want at least 1)".into());
    }
    for (split, per_class) in [
        ("per_class", config.per_class),
        ("val_per_class", config.val_per_class),
    ] {
        let images = u64::from(config.classes) * u64::from(per_class);
        if images > MAX_IMAGES {
            return bad(format!(
                "classes {} x {split} {per_class} is {images} images (want at most \
                 {MAX_IMAGES} per split)",
                config.classes
            ));
        }
    }
    if config.threads > MAX_THREADS {
        return bad(format!(
            "threads {} (want 0..={MAX_THREADS}; 0 is every core)",
            config.threads
        ));
    }
    if config.min_side < 16 {
        return bad(format!("min_side {} (want at least 16)", config.min_side));
    }
    if config.max_side < config.min_side || config.max_side > 8192 {
        return bad(format!(
            "max_side {} (want min_side {}..=8192)",
            config.max_side, config.min_side
        ));
    }
    Ok(())
}

/// Mark `count` jobs of each quirk kind among `jobs` (chosen by a seeded shuffle).
fn assign_quirks(jobs: &mut [Job], quirks: &[(Kind, usize)], seed: u64, split: u64) {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.shuffle(&mut sv_core::stream_rng(seed, STREAM_QUIRKS, split));
    let mut next = order.into_iter();
    for &(kind, count) in quirks {
        for i in next.by_ref().take(count) {
            jobs[i].kind = kind;
            if kind == Kind::Png {
                // Still named .JPEG, as in ImageNet.
                jobs[i].rel.set_extension("JPEG");
            }
        }
    }
}

/// A few: about 1 in 100, at least one when the split has room.
fn few(n: usize) -> usize {
    if n >= 4 { n.div_ceil(100) } else { 0 }
}

fn plan(config: &SynthConfig, classes: &[ClassInfo]) -> (Vec<Job>, Vec<Job>) {
    let mut train = Vec::new();
    for (c, class) in classes.iter().enumerate() {
        for i in 1..=config.per_class {
            train.push(Job {
                split: TRAIN,
                index: train.len() as u64,
                class: c as u32,
                rel: Path::new("train")
                    .join(&class.wnid)
                    .join(format!("{}_{i}.JPEG", class.wnid)),
                kind: Kind::Rgb,
            });
        }
    }
    let n = train.len();
    let png = usize::from(n >= 2);
    assign_quirks(
        &mut train,
        &[
            (Kind::Png, png),
            (Kind::Gray, few(n).max(usize::from(n >= 3))),
            (Kind::Cmyk, few(n).max(usize::from(n >= 3))),
        ],
        config.seed,
        TRAIN,
    );

    let mut labels: Vec<u32> = (0..config.classes)
        .flat_map(|c| std::iter::repeat_n(c, config.val_per_class as usize))
        .collect();
    labels.shuffle(&mut sv_core::stream_rng(config.seed, STREAM_VAL_ORDER, 0));
    let mut val: Vec<Job> = labels
        .into_iter()
        .enumerate()
        .map(|(j, class)| Job {
            split: VAL,
            index: j as u64,
            class,
            rel: Path::new("val").join(format!("{}.JPEG", val_name(j as u64 + 1))),
            kind: Kind::Rgb,
        })
        .collect();
    let v = val.len();
    assign_quirks(
        &mut val,
        &[(Kind::Gray, few(v)), (Kind::Cmyk, few(v))],
        config.seed,
        VAL,
    );
    (train, val)
}

/// The image size for one draw: ImageNet-like aspect ratios, mostly landscape.
fn size(rng: &mut impl rand::Rng, config: &SynthConfig) -> (u32, u32) {
    let aspect: f32 = if rng.random_bool(0.15) {
        1.0
    } else {
        rng.random_range(1.1..1.9)
    };
    let lo = config.min_side as f32;
    let hi = (config.max_side as f32 / aspect)
        .min(config.max_side as f32 * 0.65)
        .max(lo);
    let short = rng.random_range(lo..=hi);
    let long = (short * aspect).min(config.max_side as f32).max(short);
    let (short, long) = (short.round() as u32, long.round() as u32);
    if rng.random_bool(0.75) {
        (long, short)
    } else {
        (short, long)
    }
}

/// Per-thread scratch.
#[derive(Default)]
struct Scratch {
    rgb: Vec<u8>,
    plane: Vec<u8>,
    encoded: Vec<u8>,
}

/// Render, encode and write one job; returns (bytes written, bounding box).
fn make(
    out_dir: &Path,
    config: &SynthConfig,
    job: &Job,
    s: &mut Scratch,
) -> Result<(u64, draw::BoundingBox), SynthError> {
    let mut rng = sv_core::sample_rng(config.seed, job.split, job.index);
    let (w, h) = size(&mut rng, config);
    let bbox = draw::render(&mut rng, job.class, w, h, &mut s.rgb);
    let quality: u8 = rng.random_range(75..=95);
    let path = out_dir.join(&job.rel);
    let enc_err = |e: &dyn std::fmt::Display| SynthError::Encode {
        path: path.clone(),
        reason: e.to_string(),
    };
    s.encoded.clear();
    let (w16, h16) = (w as u16, h as u16); // max_side <= 8192
    match job.kind {
        Kind::Rgb => jpeg_encoder::Encoder::new(&mut s.encoded, quality)
            .encode(&s.rgb, w16, h16, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| enc_err(&e))?,
        Kind::Gray => {
            s.plane.clear();
            s.plane.extend(s.rgb.chunks_exact(3).map(|p| {
                ((u32::from(p[0]) * 299 + u32::from(p[1]) * 587 + u32::from(p[2]) * 114 + 500)
                    / 1000) as u8
            }));
            jpeg_encoder::Encoder::new(&mut s.encoded, quality)
                .encode(&s.plane, w16, h16, jpeg_encoder::ColorType::Luma)
                .map_err(|e| enc_err(&e))?
        }
        Kind::Cmyk => {
            s.plane.clear();
            for p in s.rgb.chunks_exact(3) {
                let max = p[0].max(p[1]).max(p[2]);
                let k = 255 - max;
                let c = |v: u8| {
                    if max == 0 {
                        0
                    } else {
                        ((u32::from(max - v) * 255 + u32::from(max) / 2) / u32::from(max)) as u8
                    }
                };
                s.plane.extend_from_slice(&[c(p[0]), c(p[1]), c(p[2]), k]);
            }
            jpeg_encoder::Encoder::new(&mut s.encoded, quality)
                .encode(&s.plane, w16, h16, jpeg_encoder::ColorType::Cmyk)
                .map_err(|e| enc_err(&e))?
        }
        Kind::Png => image::codecs::png::PngEncoder::new(&mut s.encoded)
            .write_image(&s.rgb, w, h, image::ExtendedColorType::Rgb8)
            .map_err(|e| enc_err(&e))?,
    }
    fs::write(&path, &s.encoded).map_err(|source| SynthError::Io { path, source })?;
    Ok((s.encoded.len() as u64, bbox))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write the dataset under `out_dir` (created if missing; existing files with the
/// same names are overwritten). `progress(done, total)` is called on the calling
/// thread after each image.
pub fn generate(
    out_dir: &Path,
    config: &SynthConfig,
    mut progress: impl FnMut(u64, u64),
) -> Result<SynthSummary, SynthError> {
    check(config)?;
    let classes = class_list(config.classes);
    let (train, val) = plan(config, &classes);
    for class in &classes {
        let dir = out_dir.join("train").join(&class.wnid);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    let val_dir = out_dir.join("val");
    fs::create_dir_all(&val_dir).map_err(io(&val_dir))?;

    let jobs: Vec<&Job> = train.iter().chain(&val).collect();
    let total = jobs.len();
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(total.max(1));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, Result<(u64, draw::BoundingBox), SynthError>)>();
    let mut boxes: Vec<Option<draw::BoundingBox>> = vec![None; total];
    let mut image_bytes = 0u64;
    let mut first_error = None;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, stop, jobs) = (&next, &stop, &jobs);
            scope.spawn(move || {
                let mut scratch = Scratch::default();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let r = make(out_dir, config, job, &mut scratch);
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut done = 0u64;
        for (i, r) in rx {
            match r {
                Ok((bytes, bbox)) => {
                    image_bytes += bytes;
                    boxes[i] = Some(bbox);
                    done += 1;
                    progress(done, total as u64);
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }

    // Labels: the csv rows in ImageId order, as Kaggle's (a trailing space included).
    let csv_path = out_dir.join("LOC_val_solution.csv");
    let mut csv = String::from("ImageId,PredictionString\n");
    for (j, job) in val.iter().enumerate() {
        let b = boxes[train.len() + j].ok_or_else(|| SynthError::Encode {
            path: out_dir.join(&job.rel),
            reason: "image was not written".into(),
        })?;
        csv.push_str(&format!(
            "{},{} {} {} {} {} \n",
            val_name(j as u64 + 1),
            classes[job.class as usize].wnid,
            b.xmin,
            b.ymin,
            b.xmax,
            b.ymax
        ));
    }
    write_file(&csv_path, csv.as_bytes())?;
    let map_path = out_dir.join("LOC_synset_mapping.txt");
    let mut map = String::new();
    for c in &classes {
        map.push_str(&format!("{} {}\n", c.wnid, c.name));
    }
    write_file(&map_path, map.as_bytes())?;
    if config.archives {
        let val_classes: Vec<u32> = val.iter().map(|j| j.class).collect();
        archives::write(
            out_dir,
            &classes,
            config.per_class,
            &val_classes,
            config.seed,
        )?;
    }

    let of_kind = |k: Kind| -> Vec<PathBuf> {
        jobs.iter()
            .filter(|j| j.kind == k)
            .map(|j| j.rel.clone())
            .collect()
    };
    Ok(SynthSummary {
        train_images: train.len() as u64,
        val_images: val.len() as u64,
        image_bytes,
        grayscale: of_kind(Kind::Gray),
        cmyk: of_kind(Kind::Cmyk),
        png: of_kind(Kind::Png),
        classes,
    })
}

/// The label files are written atomically: whole or not at all.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    Ok(sv_core::fs::write_atomic(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SynthConfig {
        SynthConfig {
            classes: 3,
            per_class: 4,
            val_per_class: 2,
            seed,
            min_side: 40,
            max_side: 120,
            threads: 0,
            archives: false,
        }
    }

    #[test]
    fn wnids_sort_in_class_order() {
        let list = class_list(120);
        assert!(list.windows(2).all(|w| w[0].wnid < w[1].wnid));
        assert_eq!(list[3].wnid, "n90000003");
        assert!(list[3].name.ends_with("synthetic class 3"));
    }

    #[test]
    fn bad_configs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in [
            SynthConfig {
                classes: 0,
                ..small(0)
            },
            SynthConfig {
                per_class: 0,
                ..small(0)
            },
            SynthConfig {
                min_side: 8,
                ..small(0)
            },
            SynthConfig {
                max_side: 30,
                ..small(0)
            },
            // Each of these planned every image in memory first (u32::MAX per class
            // is 17 billion jobs) or started a thread per image.
            SynthConfig {
                classes: MAX_CLASSES + 1,
                ..small(0)
            },
            SynthConfig {
                per_class: u32::MAX,
                ..small(0)
            },
            SynthConfig {
                classes: MAX_CLASSES,
                val_per_class: 501,
                ..small(0)
            },
            SynthConfig {
                threads: usize::MAX,
                ..small(0)
            },
        ] {
            let err = generate(dir.path(), &bad, |_, _| {}).unwrap_err();
            assert!(matches!(err, SynthError::InvalidConfig(_)), "{err}");
        }
    }

    #[test]
    fn quirks_and_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut calls = 0;
        let s = generate(dir.path(), &small(5), |done, total| {
            calls += 1;
            assert!(done <= total && total == 18);
        })
        .expect("generate");
        assert_eq!(calls, 18);
        assert_eq!((s.train_images, s.val_images), (12, 6));
        assert_eq!(s.png.len(), 1);
        assert!(s.png[0].starts_with("train") && s.png[0].extension().is_some_and(|e| e == "JPEG"));
        assert_eq!((s.grayscale.len(), s.cmyk.len()), (2, 2)); // one per split each
        let png = fs::read(dir.path().join(&s.png[0])).expect("png");
        assert!(png.starts_with(b"\x89PNG"));
        let csv = fs::read_to_string(dir.path().join("LOC_val_solution.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 7);
        assert!(csv.starts_with("ImageId,PredictionString\nILSVRC2012_val_00000001,n9"));
    }

    #[test]
    fn every_train_file_decodes() {
        // Including the quirks: gray, CMYK, and the PNG named .JPEG.
        let dir = tempfile::tempdir().expect("tempdir");
        let s = generate(dir.path(), &small(9), |_, _| {}).expect("generate");
        let mut prep = sv_image::Preprocessor::new(sv_image::PrepConfig::with_side(32));
        let mut out = vec![0u8; prep.output_len()];
        for class in &s.classes {
            for i in 1..=4 {
                let p = dir
                    .path()
                    .join("train")
                    .join(&class.wnid)
                    .join(format!("{}_{i}.JPEG", class.wnid));
                let bytes = fs::read(&p).expect("read");
                prep.process(&bytes, &mut out)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
    }
}
