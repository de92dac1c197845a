//! Truncation: every layout (baseline and progressive, 4:4:4/4:2:0/4:2:2, gray, CMYK,
//! restart markers, libjpeg's successive-approximation scans) decodes whole and is
//! refused when cut anywhere in its scans (with or without an EOI after the cut), cut
//! between two scans, or when its frame header claims more pixels than its data holds.

use std::path::Path;

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use proptest::prelude::*;

use crate::{ImageError, PrepConfig, Preprocessor, Truncation};

#[derive(Clone, Copy, Debug)]
struct Layout {
    color: ColorType,
    sampling: SamplingFactor,
    progressive: bool,
    restart: u16,
    optimize: bool,
}

fn layout(color: ColorType) -> Layout {
    Layout {
        color,
        sampling: SamplingFactor::F_1_1,
        progressive: false,
        restart: 0,
        optimize: false,
    }
}

/// A textured picture (every block has AC energy) encoded in `l`.
fn encode(w: u16, h: u16, l: Layout, seed: u64) -> Vec<u8> {
    let channels = match l.color {
        ColorType::Luma => 1,
        ColorType::Cmyk | ColorType::Ycck => 4,
        _ => 3,
    };
    let mut state = seed | 1;
    let px: Vec<u8> = (0..usize::from(w) * usize::from(h) * channels)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((i % 251) as u64 + (state % 64)) as u8
        })
        .collect();
    let mut out = Vec::new();
    let mut enc = Encoder::new(&mut out, 90);
    enc.set_sampling_factor(l.sampling);
    enc.set_progressive(l.progressive);
    enc.set_restart_interval(l.restart);
    enc.set_optimized_huffman_tables(l.optimize);
    enc.encode(&px, w, h, l.color).expect("encode");
    out
}

fn fixture(name: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::read(dir.join(name)).expect("fixture (tools/fixtures/jpeg.py)")
}

const LIBJPEG: [&str; 5] = [
    "libjpeg-progressive-420.jpg",
    "libjpeg-progressive-444-rst.jpg",
    "libjpeg-progressive-gray.jpg",
    "libjpeg-progressive-cmyk.jpg",
    "libjpeg-baseline-420-rst.jpg",
];

fn layouts() -> Vec<Layout> {
    let mut all = Vec::new();
    for color in [
        ColorType::Rgb,
        ColorType::Luma,
        ColorType::Cmyk,
        ColorType::Ycck,
    ] {
        for sampling in [
            SamplingFactor::F_1_1,
            SamplingFactor::F_2_2,
            SamplingFactor::F_2_1,
        ] {
            // jpeg-encoder subsamples CMYK's K channel, which zune-jpeg cannot decode
            // (Adobe's CMYK files are not subsampled; libjpeg's are in the fixtures).
            if color != ColorType::Rgb && sampling != SamplingFactor::F_1_1 {
                continue;
            }
            // jpeg-encoder's optimised tables panic on some small images; the libjpeg
            // fixtures (always optimised when progressive) cover custom tables.
            for (progressive, restart, optimize) in [
                (false, 0, false),
                (false, 2, false),
                (true, 0, false),
                (true, 3, false),
            ] {
                all.push(Layout {
                    color,
                    sampling,
                    progressive,
                    restart,
                    optimize,
                });
            }
        }
    }
    all
}

/// Offsets of every marker's first byte (`FF` followed by neither `00` nor `FF`).
fn markers(bytes: &[u8], code: impl Fn(u8) -> bool) -> Vec<usize> {
    (0..bytes.len() - 1)
        .filter(|&i| bytes[i] == 0xFF && bytes[i + 1] != 0 && bytes[i + 1] != 0xFF)
        .filter(|&i| code(bytes[i + 1]))
        .collect()
}

/// Where the data of the scan whose SOS marker is at `sos` starts.
fn scan_data(bytes: &[u8], sos: usize) -> usize {
    sos + 2 + usize::from(u16::from_be_bytes([bytes[sos + 2], bytes[sos + 3]]))
}

fn decode(bytes: &[u8]) -> Result<(), ImageError> {
    let mut p = Preprocessor::new(PrepConfig::with_side(16));
    let mut out = vec![0u8; p.output_len()];
    p.process(bytes, &mut out)
}

fn with_eoi(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

#[track_caller]
fn assert_truncated(bytes: &[u8], what: &str) {
    match decode(bytes) {
        Err(ImageError::Truncated(_)) => {}
        other => panic!("{what}: expected a truncation error, got {other:?}"),
    }
}

/// Offsets at which a cut falls inside some scan's entropy-coded data (not inside a
/// marker or a segment header, which the decoder refuses on its own).
fn data_offsets(full: &[u8]) -> Vec<usize> {
    let mut inside = Vec::new();
    for sos in markers(full, |m| m == 0xDA) {
        let data = scan_data(full, sos);
        let end = data + markers(&full[data..], |m| !(0xD0..=0xD7).contains(&m))[0];
        inside.extend((data..end).filter(|&c| full[c - 1] != 0xFF && full[c] != 0xFF));
    }
    inside
}

/// Cuts at several points of the scans' data, each with and without an EOI after it.
fn assert_every_cut_refused(full: &[u8], name: &str) {
    let inside = data_offsets(full);
    let mut cuts: Vec<usize> = [0, 1, 10, 25, 50, 75, 90, 99]
        .iter()
        .map(|pct| inside[(inside.len() - 1) * pct / 100])
        .collect();
    cuts.push(*inside.last().expect("scan data")); // only the last data byte missing
    for cut in cuts {
        assert_cut_refused(full, cut, name);
    }
}

/// `full` cut at `cut` is refused as truncated, as it is and with an EOI after the cut.
#[track_caller]
fn assert_cut_refused(full: &[u8], cut: usize, name: &str) {
    assert_truncated(&full[..cut], &format!("{name} cut at {cut}/{}", full.len()));
    assert_truncated(
        &with_eoi(&full[..cut]),
        &format!("{name} cut at {cut}/{} + EOI", full.len()),
    );
}

#[test]
fn whole_files_of_every_layout_decode() {
    for l in layouts() {
        let full = encode(37, 29, l, 7);
        decode(&full).unwrap_or_else(|e| panic!("{l:?}: {e}"));
    }
    for name in LIBJPEG {
        decode(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn cuts_anywhere_in_the_scans_are_refused() {
    for l in layouts() {
        assert_every_cut_refused(&encode(37, 29, l, 7), &format!("{l:?}"));
    }
    for name in LIBJPEG {
        assert_every_cut_refused(&fixture(name), name);
    }
}

/// A cut that removes only the last few bytes of a scan's data (a few bits of the last
/// block), with and without an EOI after it: a decoder that fills what is missing
/// with any fixed bit pattern can complete the last block from it, so this is where
/// a cheaper completeness proof than the walk would fail first.
#[test]
fn cuts_in_the_last_bytes_of_the_data_are_refused() {
    let mut files: Vec<(String, Vec<u8>)> = LIBJPEG
        .iter()
        .map(|n| (n.to_string(), fixture(n)))
        .collect();
    for l in layouts() {
        for seed in 0..24 {
            files.push((format!("{l:?} seed {seed}"), encode(37, 29, l, seed)));
        }
    }
    for (name, full) in files {
        let inside = data_offsets(&full);
        for &cut in inside.iter().rev().take(6) {
            assert_cut_refused(&full, cut, &name);
        }
    }
}

/// Which files the decoder checks: sequential ones whose first scan holds every
/// component; a first scan of fewer components (one scan per component) or a
/// progressive frame is walked instead.
#[test]
fn only_one_interleaved_sequential_scan_is_checked_in_the_decoder() {
    let full = encode(16, 16, layout(ColorType::Rgb), 1);
    assert!(super::interleaved_sequential(&full));
    assert!(super::interleaved_sequential(&encode(
        16,
        16,
        layout(ColorType::Luma),
        1
    )));
    let sos = markers(&full, |m| m == 0xDA)[0];
    let mut per_component = full.clone();
    per_component[sos + 4] = 1; // the first scan names one of the three components
    assert!(!super::interleaved_sequential(&per_component));
    let mut progressive = layout(ColorType::Rgb);
    progressive.progressive = true;
    assert!(!super::interleaved_sequential(&encode(
        16,
        16,
        progressive,
        1
    )));
}

/// Every cut in the last quarter of a sequential file's scan data, followed by EOI or
/// by a comment segment and EOI, for many pictures: some cuts fall exactly on a
/// byte-aligned MCU boundary, where zune-jpeg, finding a marker with no bits left,
/// stops the row without consuming a single made-up bit.
#[test]
fn every_cut_near_the_end_of_a_sequential_scan_is_refused() {
    const COM: [u8; 6] = [0xFF, 0xFE, 0x00, 0x04, b'h', b'i'];
    for l in layouts().into_iter().filter(|l| !l.progressive) {
        for seed in 0..8 {
            let full = encode(37, 29, l, seed);
            let inside = data_offsets(&full);
            for &cut in &inside[inside.len() * 3 / 4..] {
                let what = format!("{l:?} seed {seed} cut at {cut}/{}", full.len());
                assert_truncated(&with_eoi(&full[..cut]), &format!("{what} + EOI"));
                let mut commented = full[..cut].to_vec();
                commented.extend_from_slice(&COM);
                assert_truncated(&with_eoi(&commented), &format!("{what} + COM + EOI"));
            }
        }
    }
}

#[test]
fn cuts_between_progressive_scans_are_refused() {
    let mut files: Vec<(String, Vec<u8>)> = LIBJPEG
        .iter()
        .filter(|n| n.contains("progressive"))
        .map(|n| (n.to_string(), fixture(n)))
        .collect();
    for l in layouts().into_iter().filter(|l| l.progressive) {
        files.push((format!("{l:?}"), encode(37, 29, l, 3)));
    }
    for (name, full) in files {
        let scans = markers(&full, |m| m == 0xDA);
        assert!(scans.len() > 1, "{name} has one scan");
        for pair in scans.windows(2) {
            // Cut where the earlier scan's data ends (before any tables of the next).
            let data = scan_data(&full, pair[0]);
            let cut = data + markers(&full[data..], |m| !(0xD0..=0xD7).contains(&m))[0];
            match decode(&with_eoi(&full[..cut])) {
                Err(ImageError::Truncated(Truncation::Incomplete { .. })) => {}
                other => panic!("{name} cut before the scan at {}: {other:?}", pair[1]),
            }
        }
    }
}

/// Rewrite the frame size in the SOF header (baseline or progressive).
fn resize_frame(mut bytes: Vec<u8>, dw: u16, dh: u16) -> Vec<u8> {
    let sof = markers(&bytes, |m| matches!(m, 0xC0..=0xC2))[0];
    let h = u16::from_be_bytes([bytes[sof + 5], bytes[sof + 6]]) + dh;
    let w = u16::from_be_bytes([bytes[sof + 7], bytes[sof + 8]]) + dw;
    bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    bytes
}

#[test]
fn a_header_claiming_more_pixels_than_the_data_holds_is_refused() {
    let mut files: Vec<(String, Vec<u8>)> = LIBJPEG
        .iter()
        .map(|n| (n.to_string(), fixture(n)))
        .collect();
    for l in layouts() {
        files.push((format!("{l:?}"), encode(37, 29, l, 5)));
    }
    for (name, full) in files {
        for (dw, dh) in [(0, 16), (0, 200), (16, 0), (300, 300)] {
            let big = resize_frame(full.clone(), dw, dh);
            match decode(&big) {
                Err(ImageError::Truncated(Truncation::Scan { mcus, expected, .. })) => {
                    assert!(mcus < expected, "{name}")
                }
                other => panic!("{name} grown by {dw}x{dh}: {other:?}"),
            }
        }
    }
}

#[test]
fn the_message_says_what_is_wrong() {
    let full = encode(40, 40, layout(ColorType::Rgb), 1);
    let err = decode(&with_eoi(&full[..full.len() / 2])).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("truncated JPEG: scan 1 holds "), "{msg}");
    assert!(msg.contains("of the 25 MCUs of the 40x40 frame"), "{msg}");
    assert!(msg.contains("cut short"), "{msg}");
}

#[test]
fn trailing_bytes_after_the_image_are_harmless() {
    let mut full = encode(37, 29, layout(ColorType::Rgb), 2);
    full.extend_from_slice(&[0u8; 100]);
    decode(&full).expect("zeros after EOI");
    let mut no_eoi = encode(37, 29, layout(ColorType::Rgb), 2);
    no_eoi.truncate(no_eoi.len() - 2);
    decode(&no_eoi).expect("a whole scan without EOI");
}

/// Sequential files that end in EOI are checked inside the decoder (our zune-jpeg
/// patch), without the walk; the rest are walked. Either way a cut is refused with the
/// walk's account of it, also when the cut is followed by a restart marker, as if the
/// data of an interval went on.
#[test]
fn sequential_files_ending_in_eoi_are_checked_by_the_decoder() {
    let mut p = Preprocessor::new(PrepConfig::with_side(16));
    let mut out = vec![0u8; p.output_len()];
    let mut sequential = layout(ColorType::Rgb);
    sequential.sampling = SamplingFactor::F_2_2;
    let full = encode(64, 48, sequential, 5);
    p.process(&full, &mut out).expect("whole");
    assert_eq!(p.jpeg_walks(), 0, "a whole sequential file is not walked");
    let cut = data_offsets(&full)[data_offsets(&full).len() / 2];
    match p.process(&with_eoi(&full[..cut]), &mut out) {
        Err(ImageError::Truncated(Truncation::Scan { scan: 1, .. })) => {}
        other => panic!("cut sequential file: {other:?}"),
    }
    assert_eq!(p.jpeg_walks(), 0, "walked only to describe the error");

    let mut restart = sequential;
    restart.restart = 2;
    let full = encode(64, 48, restart, 6);
    for &cut in data_offsets(&full).iter().step_by(7) {
        let mut bytes = full[..cut].to_vec();
        bytes.extend_from_slice(&[0xFF, 0xD0]);
        assert!(
            matches!(
                p.process(&with_eoi(&bytes), &mut out),
                Err(ImageError::Truncated(_))
            ),
            "cut at {cut} + RST0 + EOI"
        );
    }

    // Cuts followed by segments a scan's data may run into: a comment, another scan
    // header (the file's own), a Huffman table segment (the file's own).
    let full = encode(64, 48, sequential, 7);
    let sos = markers(&full, |m| m == 0xDA)[0];
    let dht = markers(&full, |m| m == 0xC4)[0];
    let segment = |at: usize| {
        let len = usize::from(u16::from_be_bytes([full[at + 2], full[at + 3]]));
        full[at..at + 2 + len].to_vec()
    };
    let tails: [(&str, Vec<u8>); 3] = [
        ("COM", vec![0xFF, 0xFE, 0x00, 0x04, b'h', b'i']),
        ("SOS", segment(sos)),
        ("DHT", segment(dht)),
    ];
    for &cut in data_offsets(&full).iter().step_by(11) {
        for (name, tail) in &tails {
            let mut bytes = full[..cut].to_vec();
            bytes.extend_from_slice(tail);
            assert!(
                p.process(&with_eoi(&bytes), &mut out).is_err(),
                "cut at {cut} + {name} + EOI"
            );
        }
    }
    assert_eq!(p.jpeg_walks(), 0);

    let mut progressive = sequential;
    progressive.progressive = true;
    p.process(&encode(64, 48, progressive, 5), &mut out)
        .expect("whole");
    assert_eq!(p.jpeg_walks(), 1, "a progressive file is walked");
    let mut no_eoi = full.clone();
    no_eoi.truncate(no_eoi.len() - 2);
    p.process(&no_eoi, &mut out).expect("whole scan, no EOI");
    assert_eq!(p.jpeg_walks(), 2, "a file without EOI is walked");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_layout_decodes_whole_and_refuses_any_cut(
        w in 1u16..70,
        h in 1u16..70,
        which in 0usize..1000,
        seed in any::<u64>(),
        at in 0.0f64..1.0,
        tail in 0usize..4,
    ) {
        let all = layouts();
        let l = all[which % all.len()];
        let full = encode(w, h, l, seed);
        prop_assert!(decode(&full).is_ok(), "{:?} {}x{}", l, w, h);
        let inside = data_offsets(&full);
        let cut = inside[((inside.len() - 1) as f64 * at) as usize];
        let mut cut_file = full[..cut].to_vec();
        // after the cut: nothing, EOI, a comment and EOI, a restart marker and EOI
        let after: &[u8] = match tail {
            0 => &[],
            1 => &[0xFF, 0xD9],
            2 => &[0xFF, 0xFE, 0x00, 0x03, b'x', 0xFF, 0xD9],
            _ => &[0xFF, 0xD0, 0xFF, 0xD9],
        };
        cut_file.extend_from_slice(after);
        prop_assert!(
            matches!(decode(&cut_file), Err(ImageError::Truncated(_))),
            "{:?} {}x{} cut at {}/{}: {:?}", l, w, h, cut, full.len(), decode(&cut_file)
        );
    }
}
