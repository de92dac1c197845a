//! sv-image against an independent implementation: PIL's decode + BILINEAR resize of
//! the centred square box, made by `tools/fixtures/resize.py` (the committed
//! fixtures under tests/fixtures/). Tolerances held:
//! - full-size decode (`reduce_gap = 0`), per channel value: mean |diff| <= 0.6 and
//!   max |diff| <= 16 for JPEG (zune-jpeg vs libjpeg-turbo IDCT and chroma
//!   upsampling rounding; the max is a few pixels at a chroma block edge), mean <= 0.3
//!   and max <= 1 for PNG (same pixels in, same filter, fixed-point rounding);
//! - reduced DCT scale: `reduce_gap = 2` (1/2 scale here) mean <= 2.0, max <= 24;
//!   `reduce_gap = 1` (1/4 scale) mean <= 5.0, max <= 64. The reduced IDCT is a box
//!   average, sharper than PIL's wide triangle filter over the full-size image, so
//!   one-pixel lines differ most.

use std::path::{Path, PathBuf};

use sv_image::{Format, PrepConfig, Preprocessor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// (input file, side) from fixtures.txt.
fn cases() -> Vec<(String, u32)> {
    let text = std::fs::read_to_string(fixtures().join("fixtures.txt")).expect("fixtures.txt");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next().expect("name").to_string();
            let side = it.next().expect("side").parse().expect("side number");
            (name, side)
        })
        .collect()
}

fn reference(name: &str, side: u32) -> Vec<u8> {
    let stem = name.rsplit_once('.').expect("extension").0;
    let img = image::open(fixtures().join(format!("{stem}.{side}.png"))).expect("reference png");
    let rgb = img.to_rgb8();
    assert_eq!(rgb.dimensions(), (side, side), "{name}: reference size");
    rgb.into_raw()
}

/// (mean |diff|, max |diff|)
fn diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len());
    let mut sum = 0u64;
    let mut max = 0u8;
    for (&x, &y) in a.iter().zip(b) {
        let d = x.abs_diff(y);
        sum += u64::from(d);
        max = max.max(d);
    }
    (sum as f64 / a.len() as f64, max)
}

fn run(name: &str, side: u32, reduce_gap: f32) -> (sv_image::SourceInfo, Vec<u8>) {
    let bytes = std::fs::read(fixtures().join(name)).expect("fixture input");
    let mut prep = Preprocessor::new(PrepConfig {
        reduce_gap,
        ..PrepConfig::with_side(side)
    });
    let mut out = vec![0u8; prep.output_len()];
    let info = prep
        .process_info(&bytes, &mut out)
        .expect("process fixture");
    (info, out)
}

#[test]
fn matches_pil_at_full_decode() {
    let cases = cases();
    assert!(cases.len() >= 8, "fixtures.txt lists {} cases", cases.len());
    for (name, side) in cases {
        let (info, out) = run(&name, side, 0.0);
        assert_eq!(info.reduction, 1);
        let (mean, max) = diff(&out, &reference(&name, side));
        eprintln!("{name} side {side}: mean {mean:.3} max {max}");
        let (mean_tol, max_tol) = match info.format {
            Format::Jpeg => (0.6, 16),
            Format::Png => (0.3, 1),
        };
        assert!(
            mean <= mean_tol && max <= max_tol,
            "{name}: mean {mean:.3} (tol {mean_tol}) max {max} (tol {max_tol})"
        );
    }
}

#[test]
fn reduced_dct_scale_stays_close_to_pil() {
    // big.jpg is 520x347: at side 64, gap 2 gives 1/2 scale, gap 1 gives 1/4.
    for (gap, want, mean_tol, max_tol) in [(2.0, 2, 2.0, 24), (1.0, 4, 5.0, 64)] {
        let (info, out) = run("big.jpg", 64, gap);
        assert_eq!(info.reduction, want, "reduce_gap {gap}");
        let (mean, max) = diff(&out, &reference("big.jpg", 64));
        eprintln!("big.jpg gap {gap} (1/{want}): mean {mean:.3} max {max}");
        assert!(
            mean <= mean_tol && max <= max_tol,
            "gap {gap}: mean {mean:.3} (tol {mean_tol}) max {max} (tol {max_tol})"
        );
    }
}

#[test]
fn gray_sources_come_out_gray() {
    let (info, out) = run("gray.jpg", 64, 0.0);
    assert_eq!(info.channels, 1);
    assert!(out.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
}

#[test]
fn format_comes_from_content_not_name() {
    // A PNG under a .JPEG name, as ImageNet's n02105855_2933.JPEG.
    let bytes = std::fs::read(fixtures().join("palette.png")).expect("fixture");
    let dir = tempfile_dir();
    let fake = dir.join("n02105855_2933.JPEG");
    std::fs::write(&fake, &bytes).expect("write");
    let mut prep = Preprocessor::new(PrepConfig::with_side(64));
    let mut out = vec![0u8; prep.output_len()];
    let info = prep
        .process_info(&std::fs::read(&fake).expect("read"), &mut out)
        .expect("png named .JPEG");
    assert_eq!(info.format, Format::Png);
    let (mean, max) = diff(&out, &reference("palette.png", 64));
    assert!(mean <= 0.3 && max <= 1, "mean {mean} max {max}");
    std::fs::remove_dir_all(dir).ok();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sv-image-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
