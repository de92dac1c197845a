//! Against `tools/fixtures/pca_reference.py fixtures`: numpy's statistics of the generated
//! images, committed in `tests/fixtures`. Integer sums must match exactly; floats
//! within the tolerances the fixture states (relative to the largest entry).

use std::path::PathBuf;

use serde_json::Value;
use sv_shard::{Codec, Dataset};
use sv_stats::{Accumulator, ComputeConfig, MeanImage, Moments, compute};

use crate::common::{generate, write_dataset};

const CASES: [(&str, u32, u32); 2] = [("gen-40x16", 40, 16), ("gen-9x17", 9, 17)];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(&format!("{name}.json"))).unwrap()).unwrap()
}

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() / scale <= tol,
            "{what}: got {got:?}, numpy {want:?} (tolerance {tol})"
        );
    }
}

fn check(name: &str, m: &Moments, images: u64, pixels: u64) {
    let f = load(name);
    let tol = &f["tolerances"];
    assert_eq!(f["images"].as_u64().unwrap(), images);
    assert_eq!(f["pixels"].as_u64().unwrap(), pixels);
    assert_close(
        "mean",
        &m.mean,
        &flat(&f["mean_255"]),
        tol["mean"].as_f64().unwrap(),
    );
    let cov_tol = tol["covariance"].as_f64().unwrap();
    assert_close("std", &m.std, &flat(&f["std_255"]), cov_tol);
    let cov: Vec<f64> = m.covariance.iter().flatten().copied().collect();
    assert_close("covariance", &cov, &flat(&f["covariance_255"]), cov_tol);
    assert_close(
        "eigenvalues",
        &m.eigenvalues,
        &flat(&f["eigenvalues_255"]),
        tol["eigenvalues"].as_f64().unwrap(),
    );
    let vecs: Vec<f64> = m.eigenvectors.iter().flatten().copied().collect();
    assert_close(
        "eigenvectors",
        &vecs,
        &flat(&f["eigenvectors"]),
        tol["eigenvectors"].as_f64().unwrap(),
    );
}

#[test]
fn accumulator_matches_numpy() {
    for (name, n, side) in CASES {
        let mut acc = Accumulator::new(side).unwrap();
        for img in generate(n, side) {
            acc.add_image(&img).unwrap();
        }
        let t = acc.totals();
        let f = load(name);
        let ints = |k: &str| {
            f[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(t.channel_sums.to_vec(), ints("channel_sums"), "{name}");
        assert_eq!(t.products.to_vec(), ints("products"), "{name}");
        check(name, &Moments::from_totals(&t).unwrap(), t.images, t.pixels);

        // The mean image: numpy.save's file parses, equals ours, and ours is
        // byte-identical to numpy.save's.
        let npy = std::fs::read(fixture(&format!("{name}-mean.npy"))).unwrap();
        let numpy_mean = MeanImage::from_npy_bytes(&npy).unwrap();
        let ours = MeanImage::from_accumulator(&acc).unwrap();
        assert_eq!(ours, numpy_mean, "{name}");
        assert_eq!(
            ours.to_npy_bytes(),
            npy,
            "{name}: .npy bytes differ from numpy.save"
        );
    }
}

#[test]
fn dataset_pass_matches_numpy_for_any_worker_count() {
    for (name, n, side) in CASES {
        let dir = tempfile::tempdir().unwrap();
        // Small shards: the worker ranges cross shard boundaries.
        let image_bytes = u64::from(side * side * 3);
        write_dataset(
            dir.path(),
            side,
            Codec::Raw,
            &generate(n, side),
            4096 + 7 * image_bytes + 200,
        );
        let ds = Dataset::open(dir.path()).unwrap();
        assert!(ds.shard_count() > 1);
        let mut first: Option<String> = None;
        for workers in [1, 2, 3, 7, 64] {
            let cfg = ComputeConfig {
                workers,
                ..ComputeConfig::default()
            };
            let out = compute(&ds, &cfg, &|_| {}).unwrap();
            let m = Moments::from_totals(&out.accumulator.totals()).unwrap();
            check(name, &m, u64::from(n), u64::from(n * side * side));
            let json = out.stats.to_json();
            match &first {
                None => first = Some(json),
                Some(f) => assert_eq!(&json, f, "{name}: output differs with {workers} workers"),
            }
        }
    }
}
