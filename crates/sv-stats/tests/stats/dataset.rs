//! The dataset pass: codecs, sampling, progress, and damaged or empty datasets.

use std::sync::atomic::{AtomicU64, Ordering};

use sv_shard::{Codec, Dataset};
use sv_stats::{Accumulator, ComputeConfig, StatsError, compute, selection};

use crate::common::{generate, write_dataset};

#[test]
fn jpeg_dataset_uses_decoded_pixels_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let side = 32;
    write_dataset(dir.path(), side, Codec::Jpeg, &generate(11, side), 1 << 30);
    let ds = Dataset::open(dir.path()).unwrap();
    let mut want = Accumulator::new(side).unwrap();
    let mut scratch = Vec::new();
    for i in 0..ds.len() {
        let r = ds.record(i).unwrap();
        want.add_image(r.pixels(&mut scratch).unwrap()).unwrap();
    }
    let seen = AtomicU64::new(0);
    let cfg = ComputeConfig {
        workers: 3,
        ..ComputeConfig::default()
    };
    let out = compute(&ds, &cfg, &|n| {
        seen.fetch_add(n, Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(out.accumulator.totals(), want.totals());
    assert_eq!(seen.load(Ordering::Relaxed), 11);
    assert_eq!(out.stats.source.codec, "jpeg");
    assert_eq!(out.stats.source.records, 11);
    assert!(out.stats.verified);
}

#[test]
fn sample_is_seeded_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let side = 8;
    let images = generate(50, side);
    write_dataset(dir.path(), side, Codec::Raw, &images, 1 << 30);
    let ds = Dataset::open(dir.path()).unwrap();

    let a = selection(50, Some(10), 7).unwrap();
    assert_eq!(a, selection(50, Some(10), 7).unwrap());
    assert_ne!(a, selection(50, Some(10), 8).unwrap());
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|w| w[0] < w[1]), "sorted, distinct: {a:?}");
    assert!(selection(50, Some(50), 7).is_none());
    assert!(selection(50, None, 7).is_none());

    let cfg = ComputeConfig {
        workers: 2,
        sample: Some(10),
        seed: 7,
        ..ComputeConfig::default()
    };
    let out = compute(&ds, &cfg, &|_| {}).unwrap();
    let mut want = Accumulator::new(side).unwrap();
    for &i in &a {
        want.add_image(&images[i]).unwrap();
    }
    assert_eq!(out.accumulator.totals(), want.totals());
    assert_eq!(out.stats.images, 10);
    let s = out.stats.sample.unwrap();
    assert_eq!((s.requested, s.seed), (10, 7));

    // Asking for more than there is uses everything, and says what was asked.
    let cfg = ComputeConfig {
        sample: Some(500),
        ..ComputeConfig::default()
    };
    let out = compute(&ds, &cfg, &|_| {}).unwrap();
    assert_eq!(out.stats.images, 50);
    assert_eq!(out.stats.sample.unwrap().requested, 500);
}

#[test]
fn flipped_byte_is_an_error_naming_shard_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let side = 8u32;
    let stride = u64::from(side * side * 3);
    write_dataset(dir.path(), side, Codec::Raw, &generate(6, side), 1 << 30);
    let shard = dir.path().join("train-00000.svs");
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = (4096 + 4 * stride + 17) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();

    let cfg = ComputeConfig {
        workers: 2,
        ..ComputeConfig::default()
    };
    let err = compute(&ds, &cfg, &|_| {}).unwrap_err();
    assert!(matches!(err, StatsError::Dataset { .. }), "{err}");
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("train-00000.svs"), "{chain}");
    assert!(chain.contains("record 4"), "{chain}");
    assert!(chain.contains("checksum"), "{chain}");

    // Without verification the pass runs (documented: the damage goes unnoticed).
    let cfg = ComputeConfig {
        verify: false,
        ..ComputeConfig::default()
    };
    let out = compute(&ds, &cfg, &|_| {}).unwrap();
    assert!(!out.stats.verified);
}

#[test]
fn empty_dataset_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), 8, Codec::Raw, &[], 1 << 30);
    let ds = Dataset::open(dir.path()).unwrap();
    let err = compute(&ds, &ComputeConfig::default(), &|_| {}).unwrap_err();
    assert!(matches!(err, StatsError::Empty { .. }), "{err}");
    assert!(err.to_string().contains("no records"), "{err}");
}
