//! sv-build end to end at the library level, on a generated image tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sv_build::{BuildConfig, InputSpec, JOURNAL_FILE, build};
use sv_core::Split;
use sv_shard::{Codec, Dataset};

/// `classes` class folders of `per_class` JPEGs of varied sizes and aspect ratios.
fn tree(root: &Path, classes: usize, per_class: usize) -> PathBuf {
    let train = root.join("train");
    for c in 0..classes {
        let dir = train.join(format!("n{c:08}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let (w, h) = (
                150 + ((i * 97 + c * 31) % 400) as u32,
                140 + ((i * 53) % 300) as u32,
            );
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (x * 255 / w) as u8,
                    (y * 255 / h) as u8,
                    ((c * 60 + i * 7) % 256) as u8,
                ])
            });
            img.save(dir.join(format!("img_{i:03}.JPEG"))).unwrap();
        }
    }
    train
}

fn config(input: &Path, output: &Path, workers: usize, codec: Codec) -> BuildConfig {
    BuildConfig {
        input: InputSpec {
            input: input.to_path_buf(),
            ..Default::default()
        },
        output: output.to_path_buf(),
        split: Split::Train,
        codec,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        side: 64,
        workers,
        // 64x64x3 = 12,288 bytes: five raw records per shard.
        max_shard_bytes: 4096 + 5 * (12_288 + 24),
        strict: false,
        force: false,
    }
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn any_worker_count_gives_identical_bytes() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 3, 7);
    for codec in [Codec::Raw, Codec::Jpeg] {
        let a = t.path().join(format!("{codec}-1"));
        let b = t.path().join(format!("{codec}-4"));
        let s = build(&config(&input, &a, 1, codec), &|_| {}).unwrap();
        build(&config(&input, &b, 4, codec), &|_| {}).unwrap();
        assert_eq!(s.manifest.records, 21);
        assert!(s.rejects.is_empty());
        assert_eq!(snapshot(&a), snapshot(&b), "{codec}");
        let ds = Dataset::open(&a).unwrap();
        let labels: Vec<u32> = (0..ds.len()).map(|i| ds.label(i).unwrap()).collect();
        assert_eq!(labels, [[0; 7], [1; 7], [2; 7]].concat());
    }
}

#[test]
fn resumes_from_any_journalled_shard() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 9);
    // A planted bad file in the middle: its reject must survive the resume.
    std::fs::write(input.join("n00000001/img_004b.JPEG"), b"garbage").unwrap();
    let reference = t.path().join("reference");
    let full = build(&config(&input, &reference, 2, Codec::Raw), &|_| {}).unwrap();
    assert_eq!(full.manifest.shards.len(), 4);
    assert_eq!(full.rejects.len(), 1);
    let want = snapshot(&reference);

    for kept in 0..=3 {
        // The state a kill leaves after `kept` journalled shards: those shards, the
        // journal up to them, maybe a half-written temp file; no manifest.
        let out = t.path().join(format!("killed-{kept}"));
        let mut journal = String::new();
        build(&config(&input, &out, 2, Codec::Raw), &|_| {}).unwrap();
        // Rebuild the journal as the build wrote it, from a traced run.
        let trace = t.path().join(format!("trace-{kept}"));
        let cfg = config(&input, &trace, 1, Codec::Raw);
        std::fs::create_dir_all(&trace).unwrap();
        let lines = std::sync::Mutex::new(Vec::new());
        build(&cfg, &|p| {
            if let sv_build::Progress::Shard { .. } = p {
                let j = std::fs::read_to_string(trace.join(JOURNAL_FILE)).unwrap_or_default();
                lines.lock().unwrap().push(j);
            }
        })
        .unwrap();
        let snapshots = lines.into_inner().unwrap();
        if kept > 0 {
            journal = snapshots[kept - 1].clone();
            assert_eq!(journal.lines().count(), kept + 1, "{journal}");
        }
        for name in snapshot(&out).keys() {
            let keep = (0..kept).any(|k| name == &format!("train-{k:05}.svs"));
            if !keep {
                std::fs::remove_file(out.join(name)).unwrap();
            }
        }
        if kept > 0 {
            std::fs::write(out.join(JOURNAL_FILE), &journal).unwrap();
            std::fs::write(out.join(format!("train-{kept:05}.svs.tmp")), b"half").unwrap();
        }
        let s = build(&config(&input, &out, 3, Codec::Raw), &|_| {}).unwrap();
        assert_eq!(s.resumed_shards, kept);
        assert_eq!(snapshot(&out), want, "resumed after {kept} shards");
    }
}

#[test]
fn strict_stops_at_the_first_bad_file_and_keeps_finished_shards() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 8);
    std::fs::write(input.join("n00000001/img_003b.JPEG"), b"").unwrap();
    let out = t.path().join("out");
    let mut cfg = config(&input, &out, 2, Codec::Raw);
    cfg.strict = true;
    let err = build(&cfg, &|_| {}).unwrap_err().to_string();
    assert!(
        err.contains("img_003b.JPEG") && err.contains("strict"),
        "{err}"
    );
    assert!(!out.join("manifest.json").exists());
    // Without --strict the same command resumes and finishes.
    cfg.strict = false;
    let s = build(&cfg, &|_| {}).unwrap();
    assert!(s.resumed_shards >= 1);
    assert_eq!(s.manifest.records, 16);
    assert_eq!(s.rejects.len(), 1);
}
