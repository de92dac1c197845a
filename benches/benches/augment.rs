//! Per-image augmentation kernels on one core: crop to uint8 HWC (row memcpy),
//! mirrored crop, planar CHW crop, and the fused crop + lighting + normalise to
//! float32 CHW (channel mean and mean image). Throughput in images.
//!
//! `cargo bench -p sv-benches --bench augment`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sv_augment::{Layout, Lighting, Mean, Normalize, TrainAugment, Window, crop_f32, crop_u8};

const SIDE: u32 = 256;
const CROP: u32 = 227;

/// A deterministic 256x256 RGB image.
fn image() -> Vec<u8> {
    (0..(SIDE * SIDE * 3) as usize)
        .map(|i| ((i * 2_654_435_761) >> 13) as u8)
        .collect()
}

fn kernels(c: &mut Criterion) {
    let src = image();
    let n = (CROP * CROP * 3) as usize;
    let mut u8_out = vec![0u8; n];
    let mut f32_out = vec![0f32; n];
    let w = Window {
        x: 13,
        y: 17,
        flip: false,
    };
    let flipped = Window { flip: true, ..w };
    let light = Lighting::fb_resnet().offset([0.3, -1.0, 0.5]);
    let norm = Normalize::imagenet();
    let mean_image = Normalize {
        mean: Mean::Image((0..(SIDE * SIDE * 3)).map(|i| (i % 255) as f32).collect()),
        std: [58.0, 57.0, 57.5],
    };
    let aug = TrainAugment::new(SIDE, CROP).unwrap();

    let mut g = c.benchmark_group("augment");
    g.throughput(Throughput::Elements(1));
    g.bench_function("draw params", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(aug.draw(7, 0, i))
        })
    });
    g.bench_function("crop u8 hwc", |b| {
        b.iter(|| crop_u8(black_box(&src), SIDE, CROP, w, Layout::Hwc, &mut u8_out).unwrap())
    });
    g.bench_function("crop u8 hwc flipped", |b| {
        b.iter(|| {
            crop_u8(
                black_box(&src),
                SIDE,
                CROP,
                flipped,
                Layout::Hwc,
                &mut u8_out,
            )
            .unwrap()
        })
    });
    g.bench_function("crop u8 chw", |b| {
        b.iter(|| crop_u8(black_box(&src), SIDE, CROP, w, Layout::Chw, &mut u8_out).unwrap())
    });
    g.bench_function("crop f32 chw channel mean", |b| {
        b.iter(|| crop_f32(black_box(&src), SIDE, CROP, w, light, &norm, &mut f32_out).unwrap())
    });
    g.bench_function("crop f32 chw channel mean flipped", |b| {
        b.iter(|| {
            crop_f32(
                black_box(&src),
                SIDE,
                CROP,
                flipped,
                light,
                &norm,
                &mut f32_out,
            )
            .unwrap()
        })
    });
    g.bench_function("crop f32 chw mean image", |b| {
        b.iter(|| {
            crop_f32(
                black_box(&src),
                SIDE,
                CROP,
                w,
                light,
                &mean_image,
                &mut f32_out,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
