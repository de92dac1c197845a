//! Hub inputs are read as streams: a build from a 240 MiB parquet file or WebDataset
//! tar never holds it whole. Its own test binary, so the peak resident memory it
//! measures (Linux's VmHWM, reset first through /proc/self/clear_refs) is this build's
//! alone, not another test's running beside it.

#![cfg(target_os = "linux")]

use std::path::Path;
use std::sync::Arc;

use parquet::basic::{Compression, Repetition, Type as Physical};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use sv_build::hub::HubOptions;
use sv_build::{BuildConfig, InputSpec, build};

const ROWS: usize = 128;
const ROW_BYTES: usize = 2 << 20;

/// One row in 16 a small JPEG (so the build has records to write); the others 2 MiB of
/// bytes that differ row to row (not an image: each is a reject, read whole).
fn blob(i: usize) -> Vec<u8> {
    if i.is_multiple_of(16) {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([x as u8 * 5, y as u8 * 6, i as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        return out.into_inner();
    }
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..ROW_BYTES / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    });
    let mut b = base.clone();
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b
}

fn write_parquet(path: &Path) {
    let leaf = |name: &str, t: Physical| {
        Arc::new(
            Type::primitive_type_builder(name, t)
                .with_repetition(Repetition::REQUIRED)
                .build()
                .unwrap(),
        )
    };
    let schema = Type::group_type_builder("schema")
        .with_fields(vec![
            leaf("image", Physical::BYTE_ARRAY),
            leaf("label", Physical::INT64),
        ])
        .build()
        .unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(f, Arc::new(schema), Arc::new(props)).unwrap();
    // Row groups of 8 rows (16 MiB), as a writer streaming a large set makes them.
    for g in 0..ROWS / 8 {
        let mut rg = w.next_row_group().unwrap();
        let images: Vec<ByteArray> = (0..8).map(|i| ByteArray::from(blob(g * 8 + i))).collect();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<ByteArrayType>()
            .write_batch(&images, None, None)
            .unwrap();
        c.close().unwrap();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<Int64Type>()
            .write_batch(&[0; 8], None, None)
            .unwrap();
        c.close().unwrap();
        rg.close().unwrap();
    }
    w.close().unwrap();
}

fn write_tar(path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for i in 0..ROWS {
        for (ext, data) in [("jpg", blob(i)), ("cls", b"0".to_vec())] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, format!("s{i:05}.{ext}"), data.as_slice())
                .unwrap();
        }
    }
    b.finish().unwrap();
}

/// Peak resident memory since the last reset, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

#[test]
fn peak_memory_stays_far_below_the_input_size() {
    let t = tempfile::tempdir().unwrap();
    let names = t.path().join("classes.txt");
    std::fs::write(&names, "n00000000 only\n").unwrap();
    let pq = t.path().join("big.parquet");
    let tar = t.path().join("big.tar");
    write_parquet(&pq);
    write_tar(&tar);
    let size = ((ROWS - ROWS / 16) * ROW_BYTES) as u64;
    assert!(std::fs::metadata(&pq).unwrap().len() >= size);
    for (input, name) in [(&pq, "parquet"), (&tar, "wds")] {
        if !reset_peak() {
            eprintln!(
                "SKIPPED peak_memory_stays_far_below_the_input_size: /proc/self/clear_refs cannot be written"
            );
            return;
        }
        let before = peak_rss();
        let s = build(
            &BuildConfig {
                input: InputSpec {
                    input: input.to_path_buf(),
                    hub: HubOptions {
                        class_names: Some(names.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                output: t.path().join(format!("out-{name}")),
                split: sv_core::Split::Train,
                codec: sv_shard::Codec::Jpeg,
                jpeg_quality: 90,
                jpeg_subsampling: sv_shard::Subsampling::default(),
                side: 32,
                workers: 2,
                max_shard_bytes: 1 << 20,
                strict: false,
                max_reject_fraction: 1.0,
                force: false,
                hash_inputs: false,
                part: None,
            },
            &|_| {},
        )
        .unwrap();
        assert_eq!(
            s.rejects.len(),
            ROWS - ROWS / 16,
            "{name}: every blob read, and rejected"
        );
        assert_eq!(s.manifest.records as usize, ROWS / 16, "{name}");
        let peak = peak_rss();
        // What the build may hold: its read-ahead window (16 rows of 2 MiB) and the
        // page being decoded, with room to spare; never the 240 MiB input.
        assert!(
            peak < 128 << 20,
            "{name}: peak resident memory {} MiB (from {} MiB) for a {} MiB input",
            peak >> 20,
            before >> 20,
            size >> 20
        );
        eprintln!(
            "{name}: peak resident memory {} MiB for a {} MiB input",
            peak >> 20,
            size >> 20
        );
    }
}
