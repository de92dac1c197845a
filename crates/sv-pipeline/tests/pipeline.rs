//! The loader against generated shard datasets: content, determinism, the two output
//! forms, sampling through the loader, resume, failures, and the async stream.

mod common;

use std::sync::Arc;

use sv_pipeline::{
    Augment, Batch, Error, Layout, Lighting, Loader, LoaderConfig, Mean, Normalize, OnError,
    Output, Position,
};
use sv_shard::{Codec, Dataset};

const SIDE: u32 = 32;
const CROP: u32 = 24;

fn config(workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 8,
        workers,
        seed: 11,
        epochs: Some(2),
        augment: Augment::train(CROP),
        ..LoaderConfig::default()
    }
}

/// Everything observable about a batch, for equality checks.
#[derive(Debug, PartialEq)]
struct Seen {
    position: Position,
    indices: Vec<u64>,
    labels: Vec<u32>,
    windows: Vec<sv_pipeline::Window>,
    lighting: Vec<[f32; 3]>,
    u8: Vec<u8>,
    f32: Vec<u32>,
}

fn seen(b: &Batch) -> Seen {
    Seen {
        position: b.position(),
        indices: b.indices().to_vec(),
        labels: b.labels().to_vec(),
        windows: b.windows().to_vec(),
        lighting: b.lighting().to_vec(),
        u8: b.pixels_u8().map(<[u8]>::to_vec).unwrap_or_default(),
        f32: b
            .pixels_f32()
            .map(|v| v.iter().map(|f| f.to_bits()).collect())
            .unwrap_or_default(),
    }
}

fn collect(ds: &Arc<Dataset>, cfg: LoaderConfig) -> Vec<Seen> {
    Loader::new(ds.clone(), cfg)
        .expect("loader")
        .map(|b| seen(&b.expect("batch")))
        .collect()
}

#[test]
fn crops_are_the_records_windows() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 40, SIDE, Codec::Raw, 1 << 20);
    let batches = collect(&ds, config(2));
    assert_eq!(batches.len(), 2 * 5); // 40 / 8 per epoch, 2 epochs
    let c = CROP as usize;
    let mut flips = 0;
    for b in &batches {
        for (k, (&idx, w)) in b.indices.iter().zip(&b.windows).enumerate() {
            let src = common::pixels(idx as usize, SIDE);
            assert_eq!(b.labels[k], (idx % 5) as u32);
            flips += usize::from(w.flip);
            let img = &b.u8[k * c * c * 3..(k + 1) * c * c * 3];
            for y in 0..c {
                for x in 0..c {
                    let sx = w.x as usize + if w.flip { c - 1 - x } else { x };
                    let sy = w.y as usize + y;
                    for ch in 0..3 {
                        let want = src[(sy * SIDE as usize + sx) * 3 + ch];
                        assert_eq!(img[(y * c + x) * 3 + ch], want, "idx {idx} ({x},{y},{ch})");
                    }
                }
            }
        }
    }
    assert!(flips > 10 && flips < 70, "about half flipped: {flips}");
}

#[test]
fn same_batches_whatever_the_worker_count() {
    for codec in [Codec::Raw, Codec::Jpeg] {
        let dir = tempfile::tempdir().unwrap();
        let ds = common::dataset(dir.path(), 48, SIDE, codec, 40_000);
        assert!(ds.shard_count() > 1, "several shards");
        let one = collect(&ds, config(1));
        assert_eq!(one.len(), 12);
        for workers in [2, 3, 5] {
            assert_eq!(
                one,
                collect(&ds, config(workers)),
                "{codec:?}, {workers} workers"
            );
        }
        let mut f = config(1);
        f.output = Output::F32(Normalize::imagenet());
        let f1 = collect(&ds, f.clone());
        f.workers = 4;
        assert_eq!(f1, collect(&ds, f));
    }
}

#[test]
fn every_epoch_is_a_permutation_and_epochs_differ() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 40, SIDE, Codec::Raw, 1 << 20);
    let batches = collect(&ds, config(2));
    let epoch = |e: u64| -> Vec<u64> {
        batches
            .iter()
            .filter(|b| b.position.epoch == e)
            .flat_map(|b| b.indices.clone())
            .collect()
    };
    for e in 0..2 {
        let mut v = epoch(e);
        v.sort_unstable();
        assert_eq!(v, (0..40).collect::<Vec<_>>());
    }
    assert_ne!(epoch(0), epoch(1));
    let positions: Vec<(u64, u64)> = batches
        .iter()
        .map(|b| (b.position.epoch, b.position.batch))
        .collect();
    let want: Vec<(u64, u64)> = (0..2).flat_map(|e| (0..5).map(move |b| (e, b))).collect();
    assert_eq!(positions, want, "in order");
}

#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 40, SIDE, Codec::Raw, 1 << 20);
    let full = collect(&ds, config(2));
    // stop after the 7th batch, keep its next_position, resume there
    let mut loader = Loader::new(ds.clone(), config(3)).unwrap();
    let mut next = Position::default();
    for _ in 0..7 {
        next = loader.next().unwrap().unwrap().next_position();
    }
    drop(loader);
    assert_eq!(next, Position { epoch: 1, batch: 2 });
    let mut cfg = config(1);
    cfg.start = next;
    cfg.epochs = Some(1); // the rest of epoch 1
    let rest = collect(&ds, cfg);
    assert_eq!(rest.len(), 3);
    assert_eq!(&full[7..], &rest[..]);
}

#[test]
fn ranks_split_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 44, SIDE, Codec::Raw, 1 << 20);
    let mut all = Vec::new();
    for rank in 0..2 {
        let mut cfg = config(2);
        cfg.rank = rank;
        cfg.world_size = 2;
        cfg.epochs = Some(1);
        let batches = collect(&ds, cfg);
        assert_eq!(batches.len(), 2, "floor(44 / 16) batches on each rank");
        all.extend(batches.into_iter().flat_map(|b| b.indices));
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!((n, all.len()), (32, 32));
}

/// The u8 form with its lighting offsets and windows, normalised in plain Rust,
/// equals the f32 form.
fn check_forms_agree(norm: Normalize, layout: Layout, augment: Augment) {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 24, SIDE, Codec::Raw, 1 << 20);
    let mut cu = config(2);
    cu.augment = augment.clone();
    cu.output = Output::U8(layout);
    let mut cf = cu.clone();
    cf.output = Output::F32(norm.clone());
    let u = Loader::new(ds.clone(), cu).unwrap();
    let f = Loader::new(ds, cf).unwrap();
    let c = CROP as usize;
    let mut checked = 0;
    for (bu, bf) in u.zip(f) {
        let (bu, bf) = (bu.unwrap(), bf.unwrap());
        assert_eq!(bf.shape(), [bu.images(), 3, c, c]);
        assert_eq!(bu.windows(), bf.windows());
        assert_eq!(bu.lighting(), bf.lighting());
        let (pu, pf) = (bu.pixels_u8().unwrap(), bf.pixels_f32().unwrap());
        for n in 0..bu.images() {
            let (w, light) = (bu.windows()[n], bu.lighting()[n]);
            for ch in 0..3 {
                for y in 0..c {
                    for x in 0..c {
                        let v = match layout {
                            Layout::Nhwc => pu[((n * c + y) * c + x) * 3 + ch],
                            Layout::Nchw => pu[((n * 3 + ch) * c + y) * c + x],
                        };
                        let mean = match &norm.mean {
                            Mean::Channel(m) => m[ch],
                            Mean::Image(img) => {
                                let sx = w.x as usize + if w.flip { c - 1 - x } else { x };
                                let sy = w.y as usize + y;
                                img[(sy * SIDE as usize + sx) * 3 + ch]
                            }
                        };
                        let want = (f32::from(v) + light[ch] - mean) / norm.std[ch];
                        let got = pf[((n * 3 + ch) * c + y) * c + x];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "image {n} ch {ch} ({x},{y}): {got} vs {want}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 0);
}

#[test]
fn u8_plus_offsets_equals_f32_channel_mean() {
    check_forms_agree(Normalize::imagenet(), Layout::Nhwc, Augment::train(CROP));
    check_forms_agree(Normalize::imagenet(), Layout::Nchw, Augment::train(CROP));
}

#[test]
fn u8_plus_offsets_equals_f32_mean_image() {
    let mean: Vec<f32> = (0..SIDE * SIDE * 3)
        .map(|i| (i % 251) as f32 * 0.5)
        .collect();
    let norm = Normalize {
        mean: Mean::Image(mean),
        std: [50.0, 60.0, 70.0],
    };
    let mut strong = Lighting::fb_resnet();
    strong.convention = sv_pipeline::LightingConvention::CudaConvnet2;
    let aug = Augment::Train {
        crop: CROP,
        flip: true,
        lighting: Some(strong),
    };
    check_forms_agree(norm.clone(), Layout::Nhwc, aug);
    check_forms_agree(norm, Layout::Nchw, Augment::TenCrop { crop: CROP });
}

#[test]
fn lighting_offsets_vary_per_sample_and_are_zero_without_lighting() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 16, SIDE, Codec::Raw, 1 << 20);
    let b = collect(&ds, config(1));
    let l = &b[0].lighting;
    assert!(
        l.iter()
            .all(|o| o.iter().all(|v| v.is_finite() && v.abs() < 60.0))
    );
    assert_ne!(l[0], l[1]);
    let mut cfg = config(1);
    cfg.augment = Augment::Train {
        crop: CROP,
        flip: true,
        lighting: None,
    };
    let plain = collect(&ds, cfg);
    assert!(plain[0].lighting.iter().all(|o| *o == [0.0; 3]));
    // same crops and flips with or without lighting
    assert_eq!(plain[0].windows, b[0].windows);
    assert_eq!(plain[0].u8, b[0].u8);
}

#[test]
fn ten_crop_and_centre() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 10, SIDE, Codec::Raw, 1 << 20);
    let mut cfg = config(2);
    cfg.shuffle = false;
    cfg.drop_last = false;
    cfg.epochs = Some(1);
    cfg.batch_size = 4;
    cfg.augment = Augment::TenCrop { crop: CROP };
    let b = collect(&ds, cfg.clone());
    assert_eq!(b.len(), 3);
    assert_eq!(b[2].indices, vec![8, 9, 0, 1], "padded by wrapping around");
    assert_eq!(b[0].windows.len(), 40);
    let ten = sv_augment::ten_crop_windows(SIDE, CROP).unwrap();
    assert_eq!(&b[0].windows[10..20], &ten[..]);
    cfg.augment = Augment::Center { crop: CROP };
    let c = collect(&ds, cfg);
    // the centre view equals view 4 of the ten-crop
    let n = (CROP * CROP * 3) as usize;
    assert_eq!(&c[0].u8[..n], &b[0].u8[4 * n..5 * n]);
    assert_eq!(c[0].indices, vec![0, 1, 2, 3]);
}

/// Overwrite one byte of record `local` of the first shard.
fn damage(ds: &Dataset, local: usize) {
    let shard = &ds.shards()[0];
    let payload = ds.record(local).unwrap().payload;
    let offset = payload.as_ptr() as usize - shard.bytes().as_ptr() as usize + payload.len() / 2;
    let path = shard.path().to_path_buf();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset] ^= 0x5A;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn damaged_record_is_an_error_naming_shard_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 16, SIDE, Codec::Raw, 1 << 20);
    damage(&ds, 5);
    drop(ds);
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    let mut cfg = config(2);
    cfg.verify = true;
    let mut loader = Loader::new(ds.clone(), cfg.clone()).unwrap();
    let err = loop {
        match loader.next() {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the damaged record was never reported"),
        }
    };
    match &err {
        Error::Record {
            shard,
            record,
            index,
            ..
        } => {
            assert_eq!((shard.as_str(), *record, *index), ("train-00000.svs", 5, 5));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("train-00000.svs"), "{err}");
    assert!(loader.next().is_none(), "the stream ends after an error");

    cfg.on_error = OnError::Skip;
    let mut loader = Loader::new(ds.clone(), cfg).unwrap();
    let mut samples = 0;
    let mut skipped = 0;
    for b in loader.by_ref() {
        let b = b.unwrap();
        assert!(!b.indices().contains(&5));
        samples += b.len();
        skipped += b.skipped();
    }
    assert_eq!((samples, skipped), (2 * 16 - 2, 2));
    assert_eq!(loader.stats().skipped, 2);

    // without verification a raw record is used as stored
    let ok = collect(&ds, config(1));
    assert_eq!(ok.len(), 4);
}

#[test]
fn corrupt_jpeg_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 8, SIDE, Codec::Jpeg, 1 << 20);
    // Replace a record's payload middle with garbage: the decoder must fail.
    let shard = &ds.shards()[0];
    let payload = ds.record(3).unwrap().payload;
    let start = payload.as_ptr() as usize - shard.bytes().as_ptr() as usize;
    let path = shard.path().to_path_buf();
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[start + 2..start + payload.len()] {
        *b = 0xFF;
    }
    std::fs::write(&path, bytes).unwrap();
    drop(ds);
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    let mut cfg = config(1);
    cfg.batch_size = 8;
    let err = Loader::new(ds, cfg)
        .unwrap()
        .find_map(|b| b.err())
        .expect("an error");
    assert!(matches!(err, Error::Record { record: 3, .. }), "{err:?}");
}

#[test]
fn holding_every_buffer_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 64, SIDE, Codec::Raw, 1 << 20);
    let mut cfg = config(1);
    cfg.prefetch = 0;
    cfg.hold = 1;
    let mut loader = Loader::new(ds, cfg).unwrap();
    let mut kept = Vec::new();
    let err = loop {
        match loader.next() {
            Some(Ok(b)) => kept.push(b),
            Some(Err(e)) => break e,
            None => panic!("stream ended"),
        }
    };
    assert!(matches!(err, Error::AllBuffersHeld { held: 2 }), "{err:?}");
    kept.clear();
    assert!(
        loader.next().unwrap().is_ok(),
        "continues once batches are dropped"
    );
}

#[test]
fn batches_outlive_the_loader_and_cross_threads() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 32, SIDE, Codec::Raw, 1 << 20);
    let mut loader = Loader::new(ds, config(2)).unwrap();
    let b = loader.next().unwrap().unwrap();
    drop(loader);
    let n = std::thread::spawn(move || b.pixels_u8().map_or(0, <[u8]>::len))
        .join()
        .unwrap();
    assert_eq!(n, 8 * 24 * 24 * 3);
}

#[test]
fn async_stream_gives_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 24, SIDE, Codec::Jpeg, 1 << 20);
    let blocking = collect(&ds, config(2));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let streamed = rt.block_on(async {
        let mut loader = Loader::new(ds.clone(), config(3)).unwrap();
        let mut out = Vec::new();
        while let Some(b) = loader.next_batch().await {
            out.push(seen(&b.unwrap()));
        }
        out
    });
    assert_eq!(blocking, streamed);
}

#[test]
fn bad_settings_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset(dir.path(), 8, SIDE, Codec::Raw, 1 << 20);
    let mut cfg = config(0);
    assert!(matches!(
        Loader::new(ds.clone(), cfg.clone()),
        Err(Error::Config(_))
    ));
    cfg.workers = 1;
    cfg.augment = Augment::train(SIDE + 1);
    assert!(matches!(
        Loader::new(ds.clone(), cfg.clone()),
        Err(Error::Augment(_))
    ));
    cfg.augment = Augment::train(CROP);
    cfg.start = Position { epoch: 0, batch: 1 }; // one batch per epoch
    assert!(matches!(
        Loader::new(ds.clone(), cfg.clone()),
        Err(Error::Config(_))
    ));
    cfg.start = Position::default();
    cfg.output = Output::F32(Normalize {
        mean: Mean::Image(vec![0.0; 7]),
        std: [1.0; 3],
    });
    assert!(Loader::new(ds, cfg).is_err());
}
