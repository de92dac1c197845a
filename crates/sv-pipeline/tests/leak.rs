//! 1,000 create/iterate/drop cycles leave no threads and no memory behind.
//!
//! Its own test binary: it counts the process's threads, which other tests running
//! in parallel would disturb.

mod common;

use sv_pipeline::{Augment, Loader, LoaderConfig};
use sv_shard::Codec;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_thousand_cycles_leak_no_threads_or_memory() {
    if !std::path::Path::new("/proc/self/task").exists() {
        return; // not Linux: nothing to count with
    }
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 64, 32, Codec::Raw, 1 << 20);
    let config = |cycle: u64| LoaderConfig {
        batch_size: 8,
        workers: 2,
        seed: cycle,
        epochs: Some(1),
        augment: Augment::train(24),
        ..LoaderConfig::default()
    };
    let before = threads();
    let mut rss_after_warmup = 0;
    for cycle in 0..1000u64 {
        let mut loader = Loader::new(ds.clone(), config(cycle)).unwrap();
        // consume part of the stream (sometimes none of it), then drop mid-flight
        for _ in 0..(cycle % 4) {
            loader.next().unwrap().unwrap();
        }
        drop(loader);
        if cycle == 100 {
            rss_after_warmup = rss_kib();
        }
    }
    assert_eq!(threads(), before, "threads left behind");
    let grown = rss_kib().saturating_sub(rss_after_warmup);
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB over 900 cycles");
}
