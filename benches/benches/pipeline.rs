//! The whole loader on a generated 256x256 dataset (512 records, batch 128, all
//! cores): raw -> uint8 NHWC, raw -> float32 NCHW, jpeg -> uint8. Throughput in
//! images. The dataset stays in the page cache; the first pass maps its pages.
//!
//! `cargo bench -p sv-benches --bench pipeline`

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sv_core::{ClassInfo, Split};
use sv_pipeline::{Augment, Layout, Loader, LoaderConfig, Normalize, Output};
use sv_shard::{Codec, Dataset, DatasetWriter, WriterConfig};

const SIDE: u32 = 256;
const RECORDS: usize = 512;
const BATCH: usize = 128;
const BATCHES: usize = 8;

/// A generated dataset of smooth, noisy 256x256 images (so JPEG sizes are realistic).
fn dataset(dir: &std::path::Path, codec: Codec) -> Arc<Dataset> {
    let classes = (0..10)
        .map(|c| ClassInfo {
            wnid: format!("n{c:08}"),
            name: format!("class {c}"),
        })
        .collect();
    let config = WriterConfig {
        split: Split::Train,
        side: SIDE,
        codec,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes,
        max_shard_bytes: 64 << 20,
    };
    let mut w = DatasetWriter::create(dir, config).unwrap();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut img = vec![0u8; (SIDE * SIDE * 3) as usize];
    for i in 0..RECORDS {
        for (p, px) in img.chunks_exact_mut(3).enumerate() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let (y, x) = (p / SIDE as usize, p % SIDE as usize);
            let base = ((x + 2 * y + 9 * i) % 200) as u8;
            let noise = (s >> 59) as u8;
            px.copy_from_slice(&[base + noise, base / 2 + noise, 255 - base]);
        }
        w.push((i % 10) as u32, &img).unwrap();
    }
    w.finish().unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

fn run(ds: &Arc<Dataset>, output: Output) -> usize {
    let config = LoaderConfig {
        batch_size: BATCH,
        augment: Augment::train(227),
        output,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(ds.clone(), config).unwrap();
    loader.take(BATCHES).map(|b| b.unwrap().images()).sum()
}

fn pipeline(c: &mut Criterion) {
    let raw_dir = tempfile::tempdir().unwrap();
    let jpeg_dir = tempfile::tempdir().unwrap();
    let raw = dataset(raw_dir.path(), Codec::Raw);
    let jpeg = dataset(jpeg_dir.path(), Codec::Jpeg);
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    g.bench_function("raw -> u8 nhwc", |b| {
        b.iter(|| run(&raw, Output::U8(Layout::Nhwc)))
    });
    g.bench_function("raw -> f32 nchw", |b| {
        b.iter(|| run(&raw, Output::F32(Normalize::imagenet())))
    });
    g.bench_function("jpeg -> u8 nhwc", |b| {
        b.iter(|| run(&jpeg, Output::U8(Layout::Nhwc)))
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
