//! Unit tests: error classes, colour layouts, geometry on exact inputs, and
//! properties (never a panic on arbitrary bytes; any size comes out `side^2 x 3`).

use super::*;
use image::ImageEncoder;
use proptest::prelude::*;

fn jpeg(w: u16, h: u16, color: jpeg_encoder::ColorType, px: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(px, w, h, color)
        .expect("encode jpeg");
    out
}

fn rgb_jpeg(w: u16, h: u16, rgb: [u8; 3]) -> Vec<u8> {
    let px: Vec<u8> = (0..usize::from(w) * usize::from(h))
        .flat_map(|_| rgb)
        .collect();
    jpeg(w, h, jpeg_encoder::ColorType::Rgb, &px)
}

fn png(w: u32, h: u32, color: image::ExtendedColorType, px: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(px, w, h, color)
        .expect("encode png");
    out
}

fn prep(side: u32) -> (Preprocessor, Vec<u8>) {
    let p = Preprocessor::new(PrepConfig::with_side(side));
    let out = vec![0u8; p.output_len()];
    (p, out)
}

#[test]
fn empty_and_unknown_are_distinct_errors() {
    let (mut p, mut out) = prep(8);
    assert!(matches!(p.process(&[], &mut out), Err(ImageError::Empty)));
    let err = p.process(b"GIF89a....", &mut out).unwrap_err();
    assert!(matches!(err, ImageError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("47, 49, 46"), "{err}");
}

#[test]
fn wrong_output_buffer_is_refused() {
    let (mut p, _) = prep(8);
    let mut small = vec![0u8; 10];
    let err = p
        .process(&rgb_jpeg(16, 16, [1, 2, 3]), &mut small)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::OutputSize {
                expected: 192,
                found: 10
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_jpeg_is_corrupt() {
    let px: Vec<u8> = (0..64 * 48 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let full = jpeg(64, 48, jpeg_encoder::ColorType::Rgb, &px);
    let (mut p, mut out) = prep(16);
    p.process(&full, &mut out).expect("full file decodes");
    for cut in [full.len() / 2, 20, 3] {
        let err = p.process(&full[..cut], &mut out).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Corrupt {
                    format: Format::Jpeg,
                    ..
                } | ImageError::Truncated(_)
            ),
            "cut {cut}: {err}"
        );
    }
    let png_full = png(10, 10, image::ExtendedColorType::Rgb8, &[9u8; 300]);
    let err = p
        .process(&png_full[..png_full.len() - 20], &mut out)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Corrupt {
                format: Format::Png,
                ..
            }
        ),
        "{err}"
    );
}

/// Rewrite the frame size in a baseline JPEG's SOF0 header.
fn patch_sof(mut bytes: Vec<u8>, w: u16, h: u16) -> Vec<u8> {
    let pos = bytes
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("SOF0 marker");
    bytes[pos + 5..pos + 7].copy_from_slice(&h.to_be_bytes());
    bytes[pos + 7..pos + 9].copy_from_slice(&w.to_be_bytes());
    bytes
}

#[test]
fn decompression_bomb_is_a_limit_not_corruption() {
    let bomb = patch_sof(rgb_jpeg(16, 16, [10, 20, 30]), 60_000, 60_000);
    let (mut p, mut out) = prep(8);
    let err = p.process(&bomb, &mut out).unwrap_err();
    assert!(err.is_limit(), "{err}");
    assert!(matches!(
        err,
        ImageError::LimitExceeded {
            limit: Limit::Width,
            value: 60_000,
            ..
        }
    ));

    let mut tight = PrepConfig::with_side(8);
    tight.limits.max_alloc = 1000;
    let mut p = Preprocessor::new(tight);
    let err = p
        .process(&rgb_jpeg(20, 20, [1, 1, 1]), &mut out)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::LimitExceeded {
                limit: Limit::Alloc,
                value: 1200,
                ..
            }
        ),
        "{err}"
    );
    let err = p
        .process(
            &png(40, 40, image::ExtendedColorType::Rgb8, &[0u8; 4800]),
            &mut out,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::LimitExceeded {
                format: Format::Png,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn uniform_colour_survives_every_layout() {
    let (mut p, mut out) = prep(16);
    let cases: Vec<(&str, Vec<u8>, [u8; 3])> = vec![
        (
            "rgb8",
            png(
                30,
                20,
                image::ExtendedColorType::Rgb8,
                &[200, 100, 50].repeat(600),
            ),
            [200, 100, 50],
        ),
        (
            "rgba8",
            png(
                30,
                20,
                image::ExtendedColorType::Rgba8,
                &[200, 100, 50, 7].repeat(600),
            ),
            [200, 100, 50],
        ),
        (
            "l8",
            png(30, 20, image::ExtendedColorType::L8, &[77u8; 600]),
            [77; 3],
        ),
        (
            "la8",
            png(30, 20, image::ExtendedColorType::La8, &[77, 0].repeat(600)),
            [77; 3],
        ),
        // 16-bit, big-endian on disk: 0x8080 -> 128
        (
            "rgb16",
            png(30, 20, image::ExtendedColorType::Rgb16, &[0x80u8; 3600]),
            [128; 3],
        ),
        (
            "l16",
            png(30, 20, image::ExtendedColorType::L16, &[0xFFu8; 1200]),
            [255; 3],
        ),
        (
            "jpeg gray",
            jpeg(30, 20, jpeg_encoder::ColorType::Luma, &[90u8; 600]),
            [90; 3],
        ),
        ("jpeg rgb", rgb_jpeg(30, 20, [30, 140, 220]), [30, 140, 220]),
        // CMYK (0, 0, 0, 0) is white; (0, 255, 255, 0) is red
        (
            "jpeg cmyk",
            jpeg(
                30,
                20,
                jpeg_encoder::ColorType::Cmyk,
                &[0, 255, 255, 0].repeat(600),
            ),
            [255, 0, 0],
        ),
    ];
    for (name, bytes, want) in cases {
        p.process(&bytes, &mut out)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for px in out.chunks_exact(3) {
            for c in 0..3 {
                assert!(
                    px[c].abs_diff(want[c]) <= 3,
                    "{name}: got {px:?} want {want:?}"
                );
            }
        }
    }
}

#[test]
fn crop_is_the_centred_square() {
    // 40x20 PNG: black, except white columns 7..33. The centred 20x20 square
    // (columns 10..30) is white, and so is the filter's reach (2 source pixels at
    // this 2:1 scale) beyond it.
    let mut px = vec![0u8; 40 * 20 * 3];
    for y in 0..20 {
        for x in 7..33 {
            px[(y * 40 + x) * 3..][..3].fill(255);
        }
    }
    let (mut p, mut out) = prep(10);
    p.process(&png(40, 20, image::ExtendedColorType::Rgb8, &px), &mut out)
        .expect("decode");
    assert!(out.iter().all(|&v| v == 255), "{out:?}");
    // Transposed: a tall image crops rows.
    let mut t = vec![0u8; 20 * 40 * 3];
    for y in 7..33 {
        t[y * 20 * 3..(y + 1) * 20 * 3].fill(255);
    }
    p.process(&png(20, 40, image::ExtendedColorType::Rgb8, &t), &mut out)
        .expect("decode");
    assert!(out.iter().all(|&v| v == 255));
}

#[test]
fn reduction_is_chosen_from_the_gap() {
    let c = |gap| PrepConfig {
        reduce_gap: gap,
        ..PrepConfig::with_side(256)
    };
    assert_eq!(c(0.0).reduction(4000, 3000), 1);
    assert_eq!(c(2.0).reduction(500, 375), 1);
    assert_eq!(c(2.0).reduction(1100, 1024), 2);
    assert_eq!(c(1.0).reduction(520, 512), 2);
    assert_eq!(c(1.0).reduction(4000, 3000), 8);
    assert_eq!(c(1.0).reduction(511, 900), 1);
}

#[test]
fn reduced_decode_is_used_and_matches_full_decode_on_smooth_images() {
    // A smooth gradient: the reduced and full paths must agree closely.
    let (w, h) = (640u16, 520u16);
    let mut px = Vec::with_capacity(usize::from(w) * usize::from(h) * 3);
    for y in 0..h {
        for x in 0..w {
            px.extend_from_slice(&[(x / 3) as u8, (y / 3) as u8, ((x + y) / 6) as u8]);
        }
    }
    let bytes = jpeg(w, h, jpeg_encoder::ColorType::Rgb, &px);
    let mut outs = Vec::new();
    for gap in [0.0, 1.0] {
        let mut p = Preprocessor::new(PrepConfig {
            reduce_gap: gap,
            ..PrepConfig::with_side(128)
        });
        let mut out = vec![0u8; p.output_len()];
        let info = p.process_info(&bytes, &mut out).expect("decode");
        assert_eq!(info.reduction, if gap == 0.0 { 1 } else { 4 });
        outs.push(out);
    }
    let max = outs[0]
        .iter()
        .zip(&outs[1])
        .map(|(a, b)| a.abs_diff(*b))
        .max();
    assert!(max.unwrap_or(0) <= 4, "max diff {max:?}");
}

#[test]
fn buffers_are_reused_across_sizes() {
    let (mut p, mut out) = prep(32);
    for (w, h) in [(300, 200), (50, 60), (400, 90), (17, 17)] {
        p.process(&rgb_jpeg(w, h, [5, 6, 7]), &mut out)
            .expect("decode");
        assert!(out.chunks_exact(3).all(|px| px[0].abs_diff(5) <= 3));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (mut p, mut out) = prep(8);
        let _ = p.process(&bytes, &mut out);
    }

    #[test]
    fn damaged_jpegs_never_panic(seed in any::<u64>(), flips in 1usize..8, cut in 0.2f64..1.0) {
        let mut bytes = rgb_jpeg(33, 21, [(seed % 256) as u8, 7, 99]);
        let n = bytes.len();
        let mut s = seed;
        for _ in 0..flips {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let i = (s >> 33) as usize % n;
            bytes[i] ^= (s >> 13) as u8 | 1;
        }
        bytes.truncate(((n as f64) * cut) as usize);
        let (mut p, mut out) = prep(8);
        let _ = p.process(&bytes, &mut out);
    }

    #[test]
    fn any_size_gives_the_full_square(w in 1u16..300, h in 1u16..300, side in 1u32..80) {
        let mut p = Preprocessor::new(PrepConfig::with_side(side));
        let mut out = vec![0u8; p.output_len()];
        prop_assert_eq!(out.len(), side as usize * side as usize * 3);
        let info = p.process_info(&rgb_jpeg(w, h, [120, 60, 30]), &mut out);
        prop_assert!(info.is_ok(), "{:?}", info);
        prop_assert!(out.chunks_exact(3).all(|px| px[0].abs_diff(120) <= 4 && px[2].abs_diff(30) <= 4));
    }
}

/// A photo-like test card (gradients, a disc, stripes, noise) so every block has
/// detail and a skipped inverse DCT that mattered would show.
fn card(w: u16, h: u16, seed: u32) -> Vec<u8> {
    let (w, h) = (u32::from(w), u32::from(h));
    let mut s = seed | 1;
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let n = (s >> 28) as i32 - 8;
            let disc = (x as i32 - w as i32 / 3).pow(2) + (y as i32 - h as i32 / 2).pow(2)
                < (h as i32 / 4).pow(2);
            for c in 0..3u32 {
                let b = if disc {
                    [220, 40, 60][c as usize]
                } else if ((x + y / 2) / 3) % 2 == 0 {
                    ((x * 255 / w + c * 40) % 256) as i32
                } else {
                    ((y * 255 / h + c * 70) % 256) as i32
                };
                px.push((b + n).clamp(0, 255) as u8);
            }
        }
    }
    px
}

/// The decoder skips the inverse DCT of blocks the resize does not read: the output
/// is byte for byte that of a full decode, for landscape, portrait and square
/// images, odd sizes, every chroma layout, restart markers, two filters, two sides.
#[test]
fn region_decode_gives_the_full_decode_output() {
    use jpeg_encoder::SamplingFactor as S;
    let sizes = [
        (500u16, 375u16),
        (375, 500),
        (333, 500),
        (640, 480),
        (1023, 257),
        (301, 299),
        (97, 610),
    ];
    let layouts = [S::F_2_2, S::F_2_1, S::F_1_2, S::F_1_1];
    let mut skipped_somewhere = false;
    for (i, &(w, h)) in sizes.iter().enumerate() {
        for (l, &sampling) in layouts.iter().enumerate() {
            let px = card(w, h, (i * 7 + l) as u32);
            let mut bytes = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut bytes, 90);
            enc.set_sampling_factor(sampling);
            if (i + l) % 3 == 0 {
                enc.set_restart_interval(5);
            }
            enc.encode(&px, w, h, jpeg_encoder::ColorType::Rgb).unwrap();
            for (filter, side) in [(Filter::Bilinear, 256), (Filter::Lanczos3, 64)] {
                let config = PrepConfig {
                    filter,
                    ..PrepConfig::with_side(side)
                };
                let mut full = Preprocessor::new(config);
                full.region = false;
                let mut part = Preprocessor::new(config);
                let mut a = vec![0u8; full.output_len()];
                let mut b = a.clone();
                full.process(&bytes, &mut a).unwrap();
                part.process(&bytes, &mut b).unwrap();
                assert!(
                    a == b,
                    "{w}x{h} {sampling:?} {filter:?} side {side}: outputs differ"
                );
                let n = usize::from(w) * usize::from(h) * 3;
                skipped_somewhere |= full.pixels[..n] != part.pixels[..n];
            }
        }
    }
    // Not a vacuous pass: some decode did leave pixels outside the region undone.
    assert!(skipped_somewhere, "no decode skipped anything");
}
