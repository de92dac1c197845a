//! Peak resident memory does not grow with the dataset when the loader releases each
//! record's pages after use, and does grow (by the mapped shards) when it does not.
//!
//! Its own test binary: it reads the process's resident set, which other tests
//! running in parallel would disturb.

mod common;

use sv_pipeline::{Augment, Loader, LoaderConfig};
use sv_shard::Codec;

/// Anonymous plus file-backed resident KiB (`/proc/self/status`), or `None`.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(field("RssAnon:")? + field("RssFile:")?)
}

/// Stream one epoch of an `n`-record dataset (side 128: 48 KiB a record) and return
/// the largest resident-set growth seen after any batch, in KiB.
fn peak_growth_kib(n: usize, release_pages: bool) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), n, 128, Codec::Raw, 16 << 20);
    let config = LoaderConfig {
        batch_size: 16,
        workers: 2,
        epochs: Some(1),
        augment: Augment::train(112),
        release_pages,
        ..LoaderConfig::default()
    };
    let before = resident_kib().unwrap();
    let mut peak = 0;
    let mut seen = 0;
    for batch in Loader::new(ds, config).unwrap() {
        seen += batch.unwrap().len();
        peak = peak.max(resident_kib().unwrap().saturating_sub(before));
    }
    assert_eq!(seen, n, "one whole epoch");
    peak
}

#[test]
fn peak_resident_memory_is_independent_of_dataset_size_with_released_pages() {
    if resident_kib().is_none() {
        return; // not Linux: nothing to measure with
    }
    // 12 MiB and 48 MiB of records
    let (small, big) = (256, 1024);
    let released = (peak_growth_kib(small, true), peak_growth_kib(big, true));
    let mapped = (peak_growth_kib(small, false), peak_growth_kib(big, false));
    eprintln!("peak growth KiB, released {released:?}, kept mapped {mapped:?}");
    assert!(
        released.1 < released.0 + 8 * 1024,
        "with released pages the 4x larger dataset grew the peak from {} to {} KiB",
        released.0,
        released.1
    );
    // the control: without releasing, the mapped records stay resident
    assert!(
        mapped.1 > mapped.0 + 24 * 1024,
        "without releasing, a 36 MiB larger dataset should show in the peak: {} vs {} KiB",
        mapped.0,
        mapped.1
    );
}
