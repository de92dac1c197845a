//! Throughput of the statistics pass (bytes of pixel data per second, one thread):
//! the accumulator kernel on a cache-resident image and streaming over a buffer
//! larger than the last-level cache, and the whole per-record pass over a raw shard
//! dataset with and without per-record CRC checks.
//!
//! `cargo bench -p sv-benches --bench stats`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sv_core::{ClassInfo, Split};
use sv_shard::{Codec, Dataset, DatasetWriter, WriterConfig};
use sv_stats::{Accumulator, ComputeConfig, compute};

const SIDE: usize = 256;
const IMAGE: usize = SIDE * SIDE * 3;

/// Deterministic image-like bytes: a smooth gradient plus xorshift noise.
fn images(count: usize) -> Vec<u8> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut out = Vec::with_capacity(count * IMAGE);
    for i in 0..count {
        for p in 0..SIDE * SIDE {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let base = ((p / SIDE + p % SIDE + i * 7) % 200) as u8;
            let noise = (s >> 40) as u8 % 56;
            out.extend_from_slice(&[base + noise, base / 2 + noise, base / 3 + noise / 2]);
        }
    }
    out
}

fn accumulator(c: &mut Criterion) {
    let mut g = c.benchmark_group("stats/accumulate");
    let one = images(1);
    g.throughput(Throughput::Bytes(IMAGE as u64));
    g.bench_function("one 256x256 image, cache resident", |b| {
        let mut acc = Accumulator::new(SIDE as u32).unwrap();
        b.iter(|| acc.add_image(black_box(&one)).unwrap());
    });
    // 64 MiB: larger than the last-level cache, so this streams from memory.
    let count = 64 * 1024 * 1024 / IMAGE;
    let many = images(count);
    g.throughput(Throughput::Bytes((count * IMAGE) as u64));
    g.sample_size(10);
    g.bench_function("341 images streamed from memory", |b| {
        let mut acc = Accumulator::new(SIDE as u32).unwrap();
        b.iter(|| {
            for img in many.chunks_exact(IMAGE) {
                acc.add_image(black_box(img)).unwrap();
            }
        });
    });
    g.finish();
}

fn dataset_pass(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let count = 128;
    let pixels = images(count);
    let config = WriterConfig {
        split: Split::Train,
        side: SIDE as u32,
        codec: Codec::Raw,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes: vec![ClassInfo {
            wnid: "n00000000".into(),
            name: "bench".into(),
        }],
        max_shard_bytes: 1 << 30,
    };
    let mut w = DatasetWriter::create(dir.path(), config).unwrap();
    for img in pixels.chunks_exact(IMAGE) {
        w.push(0, img).unwrap();
    }
    w.finish().unwrap();
    let ds = Dataset::open(dir.path()).unwrap();

    let mut g = c.benchmark_group("stats/dataset pass, raw, 1 worker");
    g.throughput(Throughput::Bytes((count * IMAGE) as u64));
    g.sample_size(10);
    for verify in [false, true] {
        let cfg = ComputeConfig {
            workers: 1,
            verify,
            ..ComputeConfig::default()
        };
        let name = if verify {
            "with CRC check"
        } else {
            "no CRC check"
        };
        g.bench_function(name, |b| {
            b.iter(|| compute(&ds, &cfg, &|_| {}).unwrap());
        });
    }
    g.finish();
}

criterion_group!(benches, accumulator, dataset_pass);
criterion_main!(benches);
