//! Per-image preparation (decode + shorter side to 256 + centre crop) on
//! deterministic generated JPEGs of ImageNet-like and larger sizes, for each DCT
//! reduction setting: `gap0` always decodes at full size (the default), `gap2` reduces while at
//! least 2x the target resolution remains, `gap1` reduces as far as
//! the target allows. Inputs are 4:2:0 (as libjpeg, PIL and ImageNet's files) and, for
//! the ImageNet-like size, 4:4:4. `check/...` times sv-image's entropy-data completeness
//! check alone, which `prep` includes. One iteration = one image; compare with
//! `tools/bench/prep_pil.py` for PIL on the same job.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jpeg_encoder::SamplingFactor;
use sv_image::{JpegCheck, PrepConfig, Preprocessor};

/// A photo-like test card: gradients, a few discs, fine stripes and noise, so the
/// entropy coder has realistic work (flat images decode unrealistically fast).
fn photo_jpeg(w: u16, h: u16, sampling: SamplingFactor) -> Vec<u8> {
    let (wu, hu) = (u32::from(w), u32::from(h));
    let mut px = Vec::with_capacity(wu as usize * hu as usize * 3);
    let mut s = 0x2545_F491_u32;
    for y in 0..hu {
        for x in 0..wu {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let n = (s >> 28) as i32 - 8;
            let disc = ((x as i32 - wu as i32 / 3).pow(2) + (y as i32 - hu as i32 / 2).pow(2))
                < (hu as i32 / 4).pow(2);
            let stripe = ((x + y / 2) / 3) % 2 == 0 && y > hu * 2 / 3;
            let base = [
                (x * 255 / wu) as i32,
                (y * 255 / hu) as i32,
                ((x + y) * 127 / (wu + hu)) as i32 + 60,
            ];
            for (c, b) in base.into_iter().enumerate() {
                let v = if disc {
                    [220, 40, 60][c]
                } else if stripe {
                    b / 2 + 100
                } else {
                    b
                };
                px.push((v + n).clamp(0, 255) as u8);
            }
        }
    }
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
    enc.set_sampling_factor(sampling);
    enc.encode(&px, w, h, jpeg_encoder::ColorType::Rgb)
        .expect("encode bench jpeg");
    out
}

fn prep(c: &mut Criterion) {
    let inputs: [(u16, u16, SamplingFactor); 5] = [
        (200, 150, SamplingFactor::F_2_2),
        (500, 375, SamplingFactor::F_2_2),
        (500, 375, SamplingFactor::F_1_1),
        (900, 600, SamplingFactor::F_2_2),
        (1600, 1200, SamplingFactor::F_2_2),
    ];
    let name = |w: u16, h: u16, s: SamplingFactor| {
        let sub = if s == SamplingFactor::F_1_1 {
            "444"
        } else {
            "420"
        };
        format!("{w}x{h}-{sub}")
    };
    let mut group = c.benchmark_group("check");
    group.throughput(Throughput::Elements(1));
    for (w, h, s) in inputs {
        let bytes = photo_jpeg(w, h, s);
        let mut check = JpegCheck::new();
        group.bench_with_input(
            BenchmarkId::from_parameter(name(w, h, s)),
            &bytes,
            |b, bytes| b.iter(|| check.check(bytes).expect("complete")),
        );
    }
    group.finish();
    let mut group = c.benchmark_group("prep");
    group.throughput(Throughput::Elements(1));
    for (w, h, s) in inputs {
        let bytes = photo_jpeg(w, h, s);
        for gap in [0.0f32, 2.0, 1.0] {
            let mut p = Preprocessor::new(PrepConfig {
                reduce_gap: gap,
                ..PrepConfig::default()
            });
            let mut out = vec![0u8; p.output_len()];
            let id = BenchmarkId::new(format!("gap{gap}"), name(w, h, s));
            group.bench_with_input(id, &bytes, |b, bytes| {
                b.iter(|| p.process(bytes, &mut out).expect("prepare"))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = prep
}
criterion_main!(benches);
