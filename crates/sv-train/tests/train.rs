//! End-to-end library tests on generated shard sets (CPU, tiny model): exact resume,
//! learning above chance, evaluation modes and checkpoint round trips.

use std::path::Path;
use std::sync::Arc;

use sv_core::{ClassInfo, Split};
use sv_shard::{Codec, Dataset, DatasetWriter, WriterConfig};
use sv_train::checkpoint;
use sv_train::data::{AugmentConfig, PipelineSource, ShardSource};
use sv_train::eval::EvalMode;
use sv_train::input::{Normalization, PixelMean};
use sv_train::metrics::MetricsRecord;
use sv_train::schedule::ScheduleConfig;
use sv_train::trainer::TrainData;
use sv_train::trainer::{LAST_CHECKPOINT, TrainConfig, Trainer};
use sv_train::{Device, TrainError};

const SIDE: u32 = 72;

/// torch's generator is process-global: tests that seed it must not interleave.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn classes(n: usize) -> Vec<ClassInfo> {
    (0..n)
        .map(|i| ClassInfo {
            wnid: format!("n{i:08}"),
            name: format!("class {i}"),
        })
        .collect()
}

/// Class c: a bright square whose position and colour depend on c, on noise.
fn make_set(
    dir: &Path,
    split: Split,
    n_classes: usize,
    per_class: usize,
    seed: u64,
) -> Arc<Dataset> {
    let cfg = WriterConfig {
        split,
        side: SIDE,
        codec: Codec::Raw,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes: classes(n_classes),
        max_shard_bytes: 1 << 20,
    };
    let mut w = DatasetWriter::create(dir, cfg).unwrap();
    let side = SIDE as usize;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..per_class {
        for c in 0..n_classes {
            let mut px = vec![0u8; side * side * 3];
            for p in px.iter_mut() {
                *p = (rnd() % 96) as u8;
            }
            let (qy, qx) = ((c / 2) * side / 2, (c % 2) * side / 2);
            let jitter = (rnd() % 8) as usize + i % 3;
            for y in qy + 4 + jitter..qy + side / 2 - 4 {
                for x in qx + 4..qx + side / 2 - 4 {
                    let o = (y * side + x) * 3;
                    px[o + c % 3] = 230;
                    px[o + (c + 1) % 3] = 160;
                }
            }
            w.push(c as u32, &px).unwrap();
        }
    }
    w.finish().unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

fn config(max_steps: Option<u64>) -> TrainConfig {
    TrainConfig {
        model: "alexnet-tiny".into(),
        batch_size: 8,
        epochs: 3,
        max_steps,
        lr: 0.01,
        schedule: ScheduleConfig::Plateau {
            patience: 1,
            threshold: 0.0,
            factor: 0.1,
            min_lr: 1e-6,
            max_drops: 3,
        },
        seed: 11,
        checkpoint_every: 2,
        log_every: 2,
        final_ten_crop: false,
        ..TrainConfig::default()
    }
}

/// [`config`] without a step limit, for `epochs` epochs.
fn config_for_epochs(epochs: u64) -> TrainConfig {
    TrainConfig {
        epochs,
        ..config(None)
    }
}

fn source(data: &Arc<Dataset>, seed: u64) -> ShardSource {
    // [0, 1]-scale eigenvalues: with std 0.1, offsets of about 3, 0.5 and 0.1 grey
    // levels along the three components
    let lighting = sv_pipeline::Lighting {
        eigval: [30.0 / 255.0, 5.0 / 255.0, 1.0 / 255.0],
        eigvec: [[0.58, -0.7, 0.4], [0.58, 0.0, -0.8], [0.58, 0.7, 0.4]],
        convention: sv_pipeline::LightingConvention::Paper,
        std: 0.1,
    };
    ShardSource::new(
        data.clone(),
        8,
        seed,
        AugmentConfig {
            crop: 63,
            mirror: true,
            lighting: Some(lighting),
        },
    )
    .unwrap()
}

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = checkpoint::load(path).unwrap();
    ck.params
        .iter()
        .chain(ck.velocities.iter())
        .map(|(n, t)| (n.clone(), Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()))
        .collect()
}

/// A new CPU run of `steps` steps over `data` into `dir` (4 classes, validated on
/// `val` at each epoch end).
fn trained(
    dir: &Path,
    steps: u64,
    norm: &Normalization,
    data: &mut dyn TrainData,
    val: &Dataset,
) -> Trainer {
    let mut t = Trainer::new(
        config(Some(steps)),
        classes(4),
        norm.clone(),
        Device::Cpu,
        dir,
    )
    .unwrap();
    t.run(data, Some(val), &mut |_| {}).unwrap();
    t
}

/// The run in `dir` resumed from its last checkpoint and carried on to `steps` steps.
fn resumed(dir: &Path, steps: u64, data: &mut dyn TrainData, val: &Dataset) -> Trainer {
    let mut t = Trainer::resume(
        &dir.join(LAST_CHECKPOINT),
        config(Some(steps)),
        Device::Cpu,
        dir,
    )
    .unwrap();
    t.run(data, Some(val), &mut |_| {}).unwrap();
    t
}

#[test]
fn resume_continues_exactly() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, 10, 1); // 40 images, 5 batches
    let val = make_set(&tmp.path().join("val"), Split::Val, 4, 2, 2);
    let norm = Normalization {
        mean: [60.0; 3],
        std: [50.0; 3],
        mean_image: None,
    };
    // 8 steps cross an epoch end (validation + schedule) at step 5.
    let straight = tmp.path().join("straight");
    let t = trained(&straight, 8, &norm, &mut source(&train, 11), &val);
    assert_eq!(t.step(), 8);
    assert_eq!(t.position(), (1, 3));

    let split = tmp.path().join("split");
    let a = trained(&split, 3, &norm, &mut source(&train, 11), &val);
    assert_eq!((a.step(), a.position()), (3, (0, 3)));
    drop(a);
    let b = resumed(&split, 8, &mut source(&train, 11), &val);
    assert_eq!(b.step(), 8);
    assert_eq!(b.schedule(), t.schedule());

    let w1 = weights(&straight.join(LAST_CHECKPOINT));
    let w2 = weights(&split.join(LAST_CHECKPOINT));
    assert_eq!(w1.len(), w2.len());
    for ((n1, a), (n2, b)) in w1.iter().zip(&w2) {
        assert_eq!(n1, n2);
        assert!(a == b, "{n1} differs after resume");
    }
    // A different seed gives different weights: the comparison above can fail.
    let other = tmp.path().join("other");
    let mut c = Trainer::new(
        TrainConfig {
            seed: 12,
            ..config(Some(8))
        },
        classes(4),
        norm,
        Device::Cpu,
        &other,
    )
    .unwrap();
    c.run(&mut source(&train, 12), Some(&val), &mut |_| {})
        .unwrap();
    assert_ne!(weights(&other.join(LAST_CHECKPOINT))[0].1, w1[0].1);
}

#[test]
fn tiny_model_learns_well_above_chance() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, 32, 3); // 128 images
    let val = make_set(&tmp.path().join("val"), Split::Val, 4, 12, 4); // 48 images
    let norm = Normalization {
        mean: [60.0; 3],
        std: [50.0; 3],
        mean_image: None,
    };
    // lr 0.005: at 0.01 the tiny model's loss sometimes jumps (seen in some seeds)
    let cfg = TrainConfig {
        epochs: 3,
        max_steps: None,
        lr: 0.005,
        schedule: ScheduleConfig::Constant,
        checkpoint_every: 0,
        log_every: 8,
        final_ten_crop: true,
        ..config(None)
    };
    let mut t = Trainer::new(
        cfg,
        classes(4),
        norm,
        Device::Cpu,
        tmp.path().join("out").as_path(),
    )
    .unwrap();
    let out = t
        .run(&mut source(&train, 5), Some(&val), &mut |_| {})
        .unwrap();
    let (mode, r) = out.final_eval.unwrap();
    assert_eq!(mode, EvalMode::TenCrop);
    assert_eq!(r.images, 48);
    // Chance is 75% top-1 error with 4 classes; the bar is 25% (accuracy >= 75%).
    assert!(
        r.top1_err <= 0.25,
        "top-1 error {} after {} steps",
        r.top1_err,
        out.steps
    );
    assert_eq!(r.top5_err, 0.0, "4 classes: always in the top 5");
    let centre = t.evaluate(&val, EvalMode::Centre, None).unwrap();
    assert!(
        centre.top1_err <= 0.25,
        "centre top-1 error {}",
        centre.top1_err
    );
    let metrics = sv_train::metrics::read_metrics(&tmp.path().join("out/metrics.jsonl")).unwrap();
    assert!(metrics.len() > 3 + 3, "{} records", metrics.len());
}

#[test]
fn bench_compute_runs_on_cpu() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        model: "alexnet-owt-tiny".into(),
        batch_size: 4,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(
        cfg,
        classes(3),
        Normalization::default(),
        Device::Cpu,
        tmp.path(),
    )
    .unwrap();
    let ips = sv_train::trainer::bench_compute(&mut t, 2, 1).unwrap();
    assert!(ips > 0.0);
    assert_eq!(t.step(), 3);
}

fn pipeline(data: &Arc<Dataset>, seed: u64) -> PipelineSource {
    let config = sv_pipeline::LoaderConfig {
        batch_size: 8,
        workers: 2,
        seed,
        augment: sv_pipeline::Augment::train(63),
        ..Default::default()
    };
    PipelineSource::new(data.clone(), config).unwrap()
}

#[test]
fn pipeline_source_resumes_exactly() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, 10, 1);
    let val = make_set(&tmp.path().join("val"), Split::Val, 4, 2, 2);
    // With the paper's per-pixel mean image: it must reach the checkpoint and come
    // back on resume for the weights to match.
    let side = SIDE as usize;
    let chw: Vec<f32> = (0..3 * side * side)
        .map(|i| 40.0 + (i % 97) as f32)
        .collect();
    let mean_image = PixelMean::new(SIDE, chw).unwrap();
    let norm = Normalization {
        mean: [60.0; 3],
        std: [50.0; 3],
        mean_image: Some(mean_image.clone()),
    };
    assert_eq!(pipeline(&train, 11).batches_per_epoch(), 5);
    let straight = tmp.path().join("straight");
    trained(&straight, 8, &norm, &mut pipeline(&train, 11), &val);
    let split = tmp.path().join("split");
    trained(&split, 3, &norm, &mut pipeline(&train, 11), &val);
    resumed(&split, 8, &mut pipeline(&train, 11), &val);
    let (w1, w2) = (
        weights(&straight.join(LAST_CHECKPOINT)),
        weights(&split.join(LAST_CHECKPOINT)),
    );
    for ((n1, a), (_, b)) in w1.iter().zip(&w2) {
        assert!(a == b, "{n1} differs after resume through the pipeline");
    }
    let ck = checkpoint::load(&split.join(LAST_CHECKPOINT)).unwrap();
    assert_eq!(ck.meta.normalization.mean_image, Some(mean_image));
    assert!(ck.params.iter().all(|(n, _)| !n.starts_with("input.")));

    // The mean image changes the training: the same run with the channel mean only
    // ends elsewhere.
    let plain = tmp.path().join("plain");
    let channel_only = Normalization {
        mean_image: None,
        ..norm.clone()
    };
    trained(&plain, 8, &channel_only, &mut pipeline(&train, 11), &val);
    assert_ne!(weights(&plain.join(LAST_CHECKPOINT))[0].1, w1[0].1);
}

/// LRN against PyTorch's LocalResponseNorm (fixture from tools/fixtures/lrn.py):
/// the paper's alpha = 1e-4 is PyTorch's 5e-4 with size 5.
#[test]
fn lrn_matches_pytorch_local_response_norm() {
    let text = include_str!("fixtures/lrn.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let shape: Vec<i64> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_i64().unwrap())
        .collect();
    let nums = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (input, want) = (nums("input"), nums("output"));
    let x = tch::Tensor::from_slice(&input).reshape(&shape);
    let y = sv_train::lrn::local_response_norm(&x, sv_train::lrn::LrnParams::PAPER, 1).unwrap();
    let got: Vec<f64> = Vec::try_from(y.flatten(0, -1)).unwrap();
    let mut changed = 0;
    for (i, ((g, w), a)) in got.iter().zip(&want).zip(&input).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1.0),
            "element {i}: {g} vs pytorch {w}"
        );
        if (w - a / 2f64.powf(0.75)).abs() > 1e-3 {
            changed += 1;
        }
    }
    assert!(
        changed > got.len() / 2,
        "the fixture exercises the window sum"
    );
}

/// CUDA only (skipped, with a note, where libtorch sees no GPU): the same seed gives
/// the same weights on both devices; an eval-mode forward (no dropout) and one update
/// of the paper's rule agree with the CPU (fp32; libtorch lets cuDNN use TF32 for
/// convolutions, hence 5e-3); bf16 with channels-last agrees to bf16's precision; and
/// the trainer runs on CUDA through the pipeline, pinned staging and the copy stream
/// in every precision, channels-last on and off.
#[test]
fn cuda_matches_cpu() {
    use sv_train::model::{Model, ModelSpec};
    use sv_train::optim::{PaperSgd, SgdConfig};
    use sv_train::params::Precision;
    use tch::{Kind, Tensor};
    if !sv_train::cuda_available() {
        eprintln!("cuda_matches_cpu: skipped, no CUDA device");
        return;
    }
    let _g = lock();
    let spec = ModelSpec::by_name("alexnet-tiny", 4).unwrap();
    let host = |t: &Tensor| {
        Vec::<f32>::try_from(
            t.detach()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .flatten(0, -1),
        )
        .unwrap()
    };
    let mut results = Vec::new();
    let cases = [
        (Device::Cpu, Precision::Fp32, false),
        (Device::Cuda(0), Precision::Fp32, false),
        (Device::Cuda(0), Precision::Bf16, true),
    ];
    for (device, precision, channels_last) in cases {
        tch::manual_seed(5);
        let model = Model::with_precision(&spec, device, precision).unwrap();
        tch::manual_seed(6);
        let mut x = Tensor::randn([8, 3, 63, 63], (Kind::Float, Device::Cpu)).to_device(device);
        if channels_last {
            x = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        }
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 3, 2, 1, 0]).to_device(device);
        let logits = model.forward(&x, false).unwrap();
        assert_eq!(logits.kind(), Kind::Float, "fp32 logits in every precision");
        logits.cross_entropy_for_logits(&y).backward();
        let mut opt = PaperSgd::new(model.store(), SgdConfig::default()).unwrap();
        opt.step(model.store(), 0.01).unwrap();
        let w: Vec<Vec<f32>> = model.store().master_views().iter().map(host).collect();
        results.push((host(&logits), w));
    }
    let close = |a: &[f32], b: &[f32], tol: f32, what: &str| {
        let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (p, q)) in a.iter().zip(b).enumerate() {
            assert!(
                (p - q).abs() <= tol * scale,
                "{what}[{i}]: cpu {p} cuda {q}"
            );
        }
    };
    close(&results[0].0, &results[1].0, 5e-3, "fp32 logits");
    for (i, (a, b)) in results[0].1.iter().zip(&results[1].1).enumerate() {
        close(a, b, 5e-3, &format!("fp32 param {i} after one step"));
    }
    close(
        &results[0].0,
        &results[2].0,
        5e-2,
        "bf16 channels-last logits",
    );
    for (i, (a, b)) in results[0].1.iter().zip(&results[2].1).enumerate() {
        close(a, b, 5e-2, &format!("bf16 param {i} after one step"));
    }

    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, 10, 1);
    let norm = Normalization {
        mean: [60.0; 3],
        std: [50.0; 3],
        mean_image: None,
    };
    for (precision, channels_last) in [
        (None, None),
        (Some(Precision::Fp16), Some(true)),
        (Some(Precision::Fp32), Some(false)),
    ] {
        let dir = tmp
            .path()
            .join(format!("cuda-{precision:?}-{channels_last:?}"));
        let cfg = TrainConfig {
            precision,
            channels_last,
            ..config(Some(7))
        };
        let mut t = Trainer::new(cfg, classes(4), norm.clone(), Device::Cuda(0), &dir).unwrap();
        let out = t.run(&mut pipeline(&train, 11), None, &mut |_| {}).unwrap();
        assert_eq!(out.steps, 7);
        assert!(
            weights(&dir.join(LAST_CHECKPOINT))
                .iter()
                .all(|(_, w)| w.iter().all(|v| v.is_finite())),
            "{precision:?} {channels_last:?}"
        );
    }
}

/// A damaged record reaches the caller as the pipeline's own error, with the shard
/// and record it names kept as the source (not flattened into a string).
#[test]
fn a_damaged_record_is_a_typed_pipeline_error() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train");
    let train = make_set(&dir, Split::Train, 4, 4, 1);
    drop(train);
    // one byte in the middle of the first shard: inside an image's payload
    let shard = dir.join("train-00000.svs");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5A;
    std::fs::write(&shard, bytes).unwrap();
    let train = Arc::new(Dataset::open(&dir).unwrap());
    let config = sv_pipeline::LoaderConfig {
        batch_size: 8,
        workers: 2,
        seed: 1,
        verify: true,
        augment: sv_pipeline::Augment::train(63),
        ..Default::default()
    };
    let mut source = PipelineSource::new(train, config).unwrap();
    let mut t = Trainer::new(
        config_for_epochs(2),
        classes(4),
        Normalization::default(),
        Device::Cpu,
        &tmp.path().join("out"),
    )
    .unwrap();
    let err = t.run(&mut source, None, &mut |_| {}).unwrap_err();
    let TrainError::Pipeline(inner) = &err else {
        panic!("expected a pipeline error, got {err:?}")
    };
    assert!(
        matches!(inner, sv_pipeline::Error::Record { .. }),
        "{inner:?}"
    );
    let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        chain.contains("train-00000.svs") && chain.contains("checksum"),
        "{chain}"
    );
}

/// The per-step training losses of a run, from its metrics (log_every 1).
fn step_losses(dir: &Path) -> Vec<f64> {
    sv_train::metrics::read_metrics(&dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            sv_train::metrics::MetricsRecord::Train { loss, .. } => Some(loss),
            _ => None,
        })
        .collect()
}

/// On the CPU, the speed paths train the same net. Over 8 steps from the same init
/// and batches (lr 0.001), compared with plain fp32:
/// - channels-last fp32: losses within 1e-5, final weights within 1e-4 of the
///   distance fp32's weights moved;
/// - bf16 (channels-last) and fp16 (loss scale 256, no step skipped): the first
///   step's loss (the forward pass alone) within 0.5%, every step's within 8%, and
///   final weights within 35% (bf16) and 30% (fp16) of fp32's movement. Reduced
///   precision compounds towards the input: at init, bf16's conv1 weight gradient
///   here is some 20% off fp32's, as under torch.autocast. A missing or doubled
///   update would be off by about 100%.
#[test]
fn precisions_and_layouts_track_fp32() {
    use sv_train::params::Precision;
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, 16, 1); // 8 batches
    let norm = Normalization {
        mean: [60.0; 3],
        std: [50.0; 3],
        mean_image: None,
    };
    let run = |name: &str, precision: Precision, channels_last: bool| {
        let dir = tmp.path().join(name);
        let cfg = TrainConfig {
            precision: Some(precision),
            channels_last: Some(channels_last),
            // a scale at which no gradient overflows: no step is skipped
            loss_scale: Some(256.0),
            log_every: 1,
            checkpoint_every: 0,
            lr: 0.001,
            ..config(Some(8))
        };
        let mut t = Trainer::new(cfg, classes(4), norm.clone(), Device::Cpu, &dir).unwrap();
        t.save_checkpoint(&dir.join("init.safetensors")).unwrap();
        t.run(&mut source(&train, 11), None, &mut |_| {}).unwrap();
        let ck = checkpoint::load(&dir.join(LAST_CHECKPOINT)).unwrap();
        if precision == Precision::Fp16 {
            let scaler = ck
                .meta
                .loss_scale
                .expect("fp16 checkpoints keep the scaler");
            assert_eq!(scaler.skipped, 0, "no step skipped at scale 256");
        }
        (step_losses(&dir), dir)
    };
    let flat = |path: &Path| -> Vec<f32> {
        checkpoint::load(path)
            .unwrap()
            .params
            .iter()
            .flat_map(|(_, t)| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
            .collect()
    };
    let dist = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let (reference, ref_dir) = run("fp32", Precision::Fp32, false);
    assert_eq!(reference.len(), 8);
    let init = flat(&ref_dir.join("init.safetensors"));
    let ref_final = flat(&ref_dir.join(LAST_CHECKPOINT));
    let moved = dist(&init, &ref_final);
    assert!(moved > 0.0);
    for (name, precision, channels_last, first_tol, tol, weight_tol) in [
        ("fp32-cl", Precision::Fp32, true, 1e-5, 1e-5, 1e-4),
        ("bf16-cl", Precision::Bf16, true, 0.005, 0.08, 0.35),
        ("fp16", Precision::Fp16, false, 0.005, 0.08, 0.30),
    ] {
        let (got, dir) = run(name, precision, channels_last);
        assert_eq!(
            flat(&dir.join("init.safetensors")),
            init,
            "{name}: same init"
        );
        assert!(
            (got[0] - reference[0]).abs() <= first_tol * reference[0],
            "{name} first step: {} vs fp32 {}",
            got[0],
            reference[0]
        );
        for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
            assert!((g - r).abs() <= tol * r, "{name} step {i}: {g} vs fp32 {r}");
        }
        let off = dist(&flat(&dir.join(LAST_CHECKPOINT)), &ref_final) / moved;
        assert!(
            off <= weight_tol,
            "{name}: final weights off by {off} of fp32's movement"
        );
    }
}

/// fp16 from a loss scale far too large: the first steps overflow and are skipped
/// (the scale halves each time, nothing else changes), then training proceeds: the
/// weights move, the loss stays finite, and the checkpoint keeps the scaler's state.
#[test]
fn fp16_skips_overflowing_steps_and_recovers() {
    use sv_train::params::Precision;
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, 16, 1);
    let dir = tmp.path().join("fp16");
    let cfg = TrainConfig {
        precision: Some(Precision::Fp16),
        loss_scale: Some(2f64.powi(30)),
        log_every: 4,
        checkpoint_every: 0,
        lr: 0.001,
        ..config(Some(16))
    };
    let norm = Normalization {
        mean: [60.0; 3],
        std: [50.0; 3],
        mean_image: None,
    };
    let mut t = Trainer::new(cfg, classes(4), norm, Device::Cpu, &dir).unwrap();
    t.save_checkpoint(&dir.join("init.safetensors")).unwrap();
    t.run(&mut source(&train, 11), None, &mut |_| {}).unwrap();
    let ck = checkpoint::load(&dir.join(LAST_CHECKPOINT)).unwrap();
    let s = ck.meta.loss_scale.unwrap();
    assert!(
        s.skipped >= 1 && s.skipped < 16,
        "{} steps skipped",
        s.skipped
    );
    assert_eq!(
        s.scale,
        2f64.powi(30) / 2f64.powi(s.skipped as i32),
        "halved per skip"
    );
    assert_eq!(u64::from(s.good_steps), 16 - s.skipped);
    let init = weights(&dir.join("init.safetensors"));
    let last = weights(&dir.join(LAST_CHECKPOINT));
    assert_ne!(init[0].1, last[0].1, "the good steps moved the weights");
    assert!(last.iter().all(|(_, w)| w.iter().all(|v| v.is_finite())));
    assert!(step_losses(&dir).iter().all(|l| l.is_finite()));
}

/// Checkpoints are written in the background, but a failed write still fails the run,
/// naming the file (here `last.safetensors` is a folder), and no temporary is left.
#[test]
fn a_failed_background_checkpoint_fails_the_run() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, 4, 1);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join(LAST_CHECKPOINT)).unwrap();
    let mut t = Trainer::new(
        config(Some(3)),
        classes(4),
        Normalization::default(),
        Device::Cpu,
        &out,
    )
    .unwrap();
    let err = t
        .run(&mut source(&train, 1), None, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, TrainError::File(_)), "{err:?}");
    assert!(err.to_string().contains(LAST_CHECKPOINT), "{err}");
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The train and epoch lines of a run's metrics, without the timings (which differ
/// from run to run).
fn logged(dir: &Path) -> Vec<(String, u64, u64, f64)> {
    sv_train::metrics::read_metrics(&dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| match r {
            MetricsRecord::Train {
                step, epoch, loss, ..
            } => ("train".to_string(), step, epoch, loss),
            MetricsRecord::Epoch {
                step,
                epoch,
                train_loss,
                ..
            } => ("epoch".to_string(), step, epoch, train_loss),
            MetricsRecord::Eval { step, .. } => ("eval".to_string(), step, 0, 0.0),
        })
        .collect()
}

/// kill -9 after a checkpoint: the run's metrics stop wherever the kill came (here
/// one more step is logged, and a line is torn), its last.safetensors is the one
/// written before. Resumed, the log holds every step once, and the epoch's mean loss
/// counts the steps before the checkpoint.
#[test]
fn a_killed_run_resumed_logs_each_step_once() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, 10, 1); // 5 batches
    let val = make_set(&tmp.path().join("val"), Split::Val, 4, 2, 2);
    let norm = Normalization::default();
    let straight = tmp.path().join("straight");
    trained(&straight, 8, &norm, &mut source(&train, 11), &val);

    // Killed right after the periodic checkpoint at step 6 (inside epoch 1, log and
    // checkpoint intervals 2): everything the run wrote until then stays.
    let split = tmp.path().join("split");
    let mut t = Trainer::new(config(Some(8)), classes(4), norm, Device::Cpu, &split).unwrap();
    let mut step = 0;
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        t.run(&mut source(&train, 11), Some(&val), &mut |e| match e {
            sv_train::trainer::Event::Step { step: s, .. } => step = s,
            sv_train::trainer::Event::Checkpoint(_) if step == 6 => panic!("kill -9"),
            _ => {}
        })
    }));
    assert!(killed.is_err());
    drop(t); // the checkpoint being written lands
    let mut m = std::fs::OpenOptions::new()
        .append(true)
        .open(split.join("metrics.jsonl"))
        .unwrap();
    let past = "{\"kind\":\"train\",\"step\":7,\"epoch\":1,\"loss\":9.0,\"top1_err\":1.0,\
                \"lr\":0.01,\"images_per_s\":1.0,\"data_wait_share\":0.0}\n{\"kind\":\"tr";
    std::io::Write::write_all(&mut m, past.as_bytes()).unwrap();
    drop(m);
    resumed(&split, 8, &mut source(&train, 11), &val);

    let (a, b) = (logged(&straight), logged(&split));
    let steps = |v: &[(String, u64, u64, f64)]| {
        v.iter()
            .map(|(k, s, e, _)| (k.clone(), *s, *e))
            .collect::<Vec<_>>()
    };
    assert_eq!(steps(&a), steps(&b), "the same lines, once each");
    for (x, y) in a.iter().zip(&b) {
        // sums restored through the checkpoint's JSON may differ in the last bit
        assert!(
            (x.3 - y.3).abs() <= 1e-12 * x.3.abs(),
            "{x:?} vs {y:?}: the epoch's mean loss counts all its steps"
        );
    }
}

/// The safetensors header of `path` as JSON, and the bytes after it.
fn header(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&b[8..8 + n]).unwrap(),
        b[8 + n..].to_vec(),
    )
}

fn write_with_header(path: &Path, h: &serde_json::Value, data: &[u8]) {
    let text = serde_json::to_vec(h).unwrap();
    let mut b = (text.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&text);
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

fn load_err(path: &Path) -> String {
    let err = checkpoint::load(path).unwrap_err();
    std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Every tensor and the metadata carry CRCs: a flipped byte anywhere is refused,
/// naming the file and the tensor; errors are words, never safetensors' Debug text.
#[test]
fn a_damaged_checkpoint_is_refused_naming_the_tensor() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, 4, 1);
    let out = tmp.path().join("out");
    let mut t = Trainer::new(
        config(Some(2)),
        classes(4),
        Normalization::default(),
        Device::Cpu,
        &out,
    )
    .unwrap();
    t.run(&mut source(&train, 1), None, &mut |_| {}).unwrap();
    let good = out.join(LAST_CHECKPOINT);
    checkpoint::load(&good).unwrap();
    let (h, data) = header(&good);
    let bad = tmp.path().join("bad.safetensors");
    // one bit in the middle of each tensor (weights, momentum)
    for (name, entry) in h.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let [start, end] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap() as usize);
        let mut d = data.clone();
        d[(start + end) / 2] ^= 0x04;
        write_with_header(&bad, &h, &d);
        let err = load_err(&bad);
        assert!(
            err.contains("bad.safetensors") && err.contains(&format!("tensor `{name}` is damaged")),
            "{name}: {err}"
        );
    }
    // the metadata: a value changed, a checksum dropped, a tensor's checksum dropped
    let mut edited = h.clone();
    let meta = edited["__metadata__"]["supervision"].as_str().unwrap();
    let changed = meta.replacen("\"step\":2", "\"step\":3", 1);
    assert_ne!(changed, meta);
    edited["__metadata__"]["supervision"] = changed.into();
    write_with_header(&bad, &edited, &data);
    assert!(
        load_err(&bad).contains("metadata is damaged"),
        "{}",
        load_err(&bad)
    );
    let mut edited = h.clone();
    edited["__metadata__"]
        .as_object_mut()
        .unwrap()
        .remove("supervision.crc32");
    write_with_header(&bad, &edited, &data);
    assert!(
        load_err(&bad).contains("without its checksums"),
        "{}",
        load_err(&bad)
    );
    // a file written before checksums existed (version 1) still loads
    let mut v1 = h.clone();
    let md = v1["__metadata__"].as_object_mut().unwrap();
    md.remove("supervision.crc32");
    md.remove("supervision.tensor_crc32");
    let meta = md["supervision"].as_str().unwrap().replacen(
        &format!("\"version\":{}", checkpoint::CHECKPOINT_VERSION),
        "\"version\":1",
        1,
    );
    md.insert("supervision".into(), meta.into());
    write_with_header(&bad, &v1, &data);
    let ck = checkpoint::load(&bad).unwrap();
    assert_eq!(ck.meta.version, 1);
    // not a checkpoint at all: words, not `HeaderTooSmall`
    for (bytes, want) in [
        (b"hello".to_vec(), "shorter than a safetensors header"),
        (
            u64::MAX.to_le_bytes().to_vec(),
            "header length is more than",
        ),
        (
            std::fs::read(&good).unwrap()[..1000].to_vec(),
            "runs past the end",
        ),
    ] {
        std::fs::write(&bad, &bytes).unwrap();
        let err = load_err(&bad);
        assert!(err.contains(want) && !err.contains("Header"), "{err}");
    }
    // a folder is named as one
    let err = load_err(&out);
    assert!(
        err.contains("directory") && !err.contains("os error 21: Is a"),
        "{err}"
    );
}

/// The `config` object of a format-2 checkpoint of [`config`]`(Some(2))`, as the
/// trainer wrote it before the settings were stored as `spec` and `limits` (issue 22),
/// with the data settings the CLI kept.
const FORMAT_2_CONFIG: &str = r#"{"model":"alexnet-tiny","init":null,"input_scale":null,
"batch_size":8,"epochs":3,"max_steps":2,"lr":0.01,"schedule":{"kind":"plateau","patience":1,
"threshold":0.0,"factor":0.1,"min_lr":1e-6,"max_drops":3},"sgd":{"momentum":0.9,
"weight_decay":0.0005,"decay_biases":true},"seed":11,"checkpoint_every":2,"log_every":2,
"val_limit":null,"final_ten_crop":false,"prefetch_depth":1,"precision":null,
"channels_last":null,"loss_scale":null,"copy_stream":null,"dropout":null,
"data":{"side":72,"mirror":true,"lighting":null,"loader":"simple","dataset":"abc"},
"keep_epochs":0}"#;

/// A checkpoint written in format 2 (one flat `config`, checksums) still loads, its
/// settings read into the typed spec and limits, and resumes exactly as the same
/// checkpoint in today's format does.
#[test]
fn a_format_2_checkpoint_loads_and_resumes() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, 4, 1);
    let val = make_set(&tmp.path().join("val"), Split::Val, 4, 1, 2);
    let now = tmp.path().join("now");
    trained(
        &now,
        2,
        &Normalization::default(),
        &mut source(&train, 11),
        &val,
    );
    let (mut h, data) = header(&now.join(LAST_CHECKPOINT));
    // today's metadata, rewritten as format 2 wrote it
    let md = h["__metadata__"].as_object_mut().unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(md["supervision"].as_str().unwrap()).unwrap();
    let m = meta.as_object_mut().unwrap();
    assert!(m.contains_key("spec") && m.contains_key("limits"));
    m.remove("spec");
    m.remove("limits");
    m.insert("version".into(), 2.into());
    m.insert(
        "config".into(),
        serde_json::from_str(FORMAT_2_CONFIG).unwrap(),
    );
    let meta = serde_json::to_string(&meta).unwrap();
    let crcs = md["supervision.tensor_crc32"].as_str().unwrap().to_string();
    let crc = crc32fast::hash(format!("{meta}\n{crcs}").as_bytes());
    md.insert("supervision".into(), meta.into());
    md.insert("supervision.crc32".into(), format!("{crc:08x}").into());
    let old = tmp.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    write_with_header(&old.join(LAST_CHECKPOINT), &h, &data);

    let ck = checkpoint::load(&old.join(LAST_CHECKPOINT)).unwrap();
    assert_eq!(ck.meta.version, 2);
    // the same spec as today's file, and the data settings it kept
    let mut want = checkpoint::load(&now.join(LAST_CHECKPOINT))
        .unwrap()
        .meta
        .spec;
    want.data = ck.meta.spec.data.clone();
    assert_eq!(ck.meta.spec, want);
    assert_eq!(
        ck.meta.spec.data.as_ref().map(|d| d.loader.as_str()),
        Some("simple")
    );
    assert_eq!((ck.meta.spec.batch_size, ck.meta.spec.seed), (8, 11));
    assert_eq!(
        (ck.meta.limits.max_steps, ck.meta.limits.log_every),
        (Some(2), 2)
    );
    assert_eq!(ck.meta.trained_side(), Some(72));
    let header = checkpoint::read_header(&old.join(LAST_CHECKPOINT)).unwrap();
    assert_eq!(header.meta, ck.meta);
    // both resume to the same weights
    resumed(&now, 4, &mut source(&train, 11), &val);
    resumed(&old, 4, &mut source(&train, 11), &val);
    assert_eq!(
        weights(&now.join(LAST_CHECKPOINT)),
        weights(&old.join(LAST_CHECKPOINT))
    );
    let resaved = checkpoint::load(&old.join(LAST_CHECKPOINT)).unwrap();
    assert_eq!(resaved.meta.version, checkpoint::CHECKPOINT_VERSION);
    assert_eq!(
        resaved.meta.spec.data, ck.meta.spec.data,
        "the data settings carry over"
    );
}

/// The reference loader checks each record's CRC by default: a flipped payload byte
/// stops training naming the shard and record; `verify(false)` reads it as it is.
#[test]
fn the_shard_source_checks_records() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train");
    drop(make_set(&dir, Split::Train, 4, 4, 1));
    let shard = dir.join("train-00000.svs");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5A;
    std::fs::write(&shard, bytes).unwrap();
    let train = Arc::new(Dataset::open(&dir).unwrap());
    let run = |src: ShardSource, out: &str| {
        Trainer::new(
            config_for_epochs(1),
            classes(4),
            Normalization::default(),
            Device::Cpu,
            &tmp.path().join(out),
        )
        .unwrap()
        .run(&mut { src }, None, &mut |_| {})
    };
    let err = run(source(&train, 1), "a").unwrap_err();
    let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        chain.contains("train-00000.svs") && chain.contains("record") && chain.contains("checksum"),
        "{chain}"
    );
    run(source(&train, 1).verify(false), "b").unwrap();
}
