//! `supervision pca compute` end to end, on shard datasets the tests write. Expected
//! values are computed here independently (plain f64 over the generated pixels).

use std::path::Path;

use serde_json::Value;
use sv_core::{ClassInfo, Split};
use sv_shard::{Codec, DatasetWriter, WriterConfig};
use sv_tests::{fails, names, ok, s};

const SIDE: u32 = 12;

/// Correlated, image-like pixels: a per-image gradient plus per-channel noise.
fn images(n: u32) -> Vec<Vec<u8>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 33) as u32
    };
    (0..n)
        .map(|i| {
            let mut img = Vec::new();
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let base = (i * 17 + y * 9 + x * 4) % 180;
                    img.push((base + noise() % 70) as u8);
                    img.push((base * 2 / 3 + noise() % 60 + 30) as u8);
                    img.push((base / 3 + noise() % 120) as u8);
                }
            }
            img
        })
        .collect()
}

fn write(dir: &Path, codec: Codec, imgs: &[Vec<u8>], max_shard_bytes: u64) {
    let config = WriterConfig {
        split: Split::Train,
        side: SIDE,
        codec,
        jpeg_quality: 95,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes: vec![ClassInfo {
            wnid: "n00000001".into(),
            name: "only".into(),
        }],
        max_shard_bytes,
    };
    let mut w = DatasetWriter::create(dir, config).unwrap();
    for img in imgs {
        w.push(0, img).unwrap();
    }
    w.finish().unwrap();
}

/// The arguments of `pca compute` over `shards` writing `out`, plus `extra` flags.
fn pca_args<'a>(shards: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["pca", "compute", "--shards", s(shards), "--output", s(out)];
    args.extend_from_slice(extra);
    args
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn vec3(v: &Value) -> [f64; 3] {
    let a = v.as_array().unwrap();
    [0, 1, 2].map(|i| a[i].as_f64().unwrap())
}

/// (mean, population covariance) of every pixel, 0-255 scale.
fn expected(imgs: &[Vec<u8>]) -> ([f64; 3], [[f64; 3]; 3]) {
    let px: Vec<[f64; 3]> = imgs
        .iter()
        .flat_map(|i| i.chunks_exact(3).map(|p| [p[0], p[1], p[2]].map(f64::from)))
        .collect();
    let n = px.len() as f64;
    let mut mean = [0.0; 3];
    for p in &px {
        for c in 0..3 {
            mean[c] += p[c] / n;
        }
    }
    let mut cov = [[0.0; 3]; 3];
    for p in &px {
        for c in 0..3 {
            for d in 0..3 {
                cov[c][d] += (p[c] - mean[c]) * (p[d] - mean[d]) / n;
            }
        }
    }
    (mean, cov)
}

#[test]
fn compute_writes_documented_json_and_npy() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    let imgs = images(30);
    // Several shards, so the workers' ranges cross shard boundaries.
    write(
        &shards,
        Codec::Raw,
        &imgs,
        4096 + 8 * u64::from(SIDE * SIDE * 3) + 500,
    );
    let out = tmp.path().join("stats/pca.json");
    let npy = tmp.path().join("stats/mean.npy");
    let stdout = ok(&pca_args(
        &shards,
        &out,
        &["--mean-image", s(&npy), "--workers", "3"],
    ));
    assert!(stdout.contains("30 images of 30 records"), "{stdout}");

    let v = read_json(&out);
    assert_eq!(v["format"], "supervision-pca");
    assert_eq!(v["version"], 1);
    assert_eq!(v["images"], 30);
    assert_eq!(v["pixels"], 30 * SIDE * SIDE);
    assert_eq!(v["channel_order"], "RGB");
    assert_eq!(v["verified"], true);
    assert_eq!(v["sample"], Value::Null);
    assert_eq!(v["source"]["records"], 30);
    let (mean, cov) = expected(&imgs);
    let got_mean = vec3(&v["scale_255"]["mean"]);
    for c in 0..3 {
        assert!(
            (got_mean[c] - mean[c]).abs() < 1e-9,
            "{got_mean:?} vs {mean:?}"
        );
        let row = vec3(&v["scale_255"]["covariance"][c]);
        for d in 0..3 {
            assert!(
                (row[d] - cov[c][d]).abs() < 1e-8 * cov[0][0],
                "cov {c}{d}: {} vs {}",
                row[d],
                cov[c][d]
            );
            let unit = vec3(&v["scale_unit"]["covariance"][c])[d];
            assert!((unit * 65025.0 - cov[c][d]).abs() < 1e-8 * cov[0][0]);
        }
        let std = vec3(&v["scale_255"]["std"])[c];
        assert!((std - cov[c][c].sqrt()).abs() < 1e-9);
    }
    // Eigen-pairs: unit vectors, descending values, C v = lambda v, sign convention.
    let vals = vec3(&v["scale_255"]["eigenvalues"]);
    assert!(
        vals[0] >= vals[1] && vals[1] >= vals[2] && vals[2] >= 0.0,
        "{vals:?}"
    );
    for i in 0..3 {
        let e = vec3(&v["eigenvectors"][i]);
        let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-12);
        let big = e
            .iter()
            .copied()
            .fold(0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        assert!(big > 0.0, "largest component must be positive: {e:?}");
        for c in 0..3 {
            let cv: f64 = (0..3).map(|d| cov[c][d] * e[d]).sum();
            assert!(
                (cv - vals[i] * e[c]).abs() < 1e-7 * vals[0],
                "C v != lambda v for {i}"
            );
        }
    }
    let l = &v["lighting"];
    assert_eq!(l["alpha_std"], 0.1);
    let paper = vec3(&l["paper"]["magnitudes_unit"]);
    let convnet = vec3(&l["cuda_convnet2"]["magnitudes_255"]);
    for i in 0..3 {
        assert!((paper[i] - vals[i] / 65025.0).abs() < 1e-12);
        assert!((convnet[i] - vals[i].sqrt()).abs() < 1e-9);
    }
    assert_eq!(v["mean_image"]["layout"], "CHW");
    assert_eq!(v["mean_image"]["dtype"], "<f4");
    assert_eq!(v["mean_image"]["shape"], serde_json::json!([3, SIDE, SIDE]));

    // The .npy: numpy v1.0 header, (3, side, side) float32 CHW.
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'shape': (3, 12, 12)"),
        "{header}"
    );
    let data = &bytes[10 + hlen..];
    assert_eq!(data.len(), (3 * SIDE * SIDE * 4) as usize);
    let plane = (SIDE * SIDE) as usize;
    for (c, p) in [(0usize, 0usize), (1, 5), (2, plane - 1)] {
        let at = (c * plane + p) * 4;
        let got = f32::from_le_bytes(data[at..at + 4].try_into().unwrap());
        let want = imgs.iter().map(|i| f64::from(i[p * 3 + c])).sum::<f64>() / 30.0;
        assert_eq!(got, want as f32, "mean image ({c}, {p})");
    }
}

#[test]
fn output_does_not_depend_on_worker_count_and_sample_is_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write(
        &shards,
        Codec::Raw,
        &images(23),
        4096 + 5 * u64::from(SIDE * SIDE * 3) + 200,
    );
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(format!("{name}.json"));
        let npy = tmp.path().join(format!("{name}.npy"));
        let mut flags = vec!["--mean-image", s(&npy)];
        flags.extend_from_slice(extra);
        ok(&pca_args(&shards, &out, &flags));
        let json = std::fs::read_to_string(&out).unwrap();
        // The file names differ by design; compare everything else.
        let json = json.replace(s(&npy), "MEAN");
        (json, std::fs::read(&npy).unwrap())
    };
    let one = run("w1", &["--workers", "1"]);
    let four = run("w4", &["--workers", "4"]);
    assert_eq!(one, four);

    let a = run("sa", &["--sample", "7", "--seed", "3", "--workers", "2"]);
    let b = run("sb", &["--sample", "7", "--seed", "3", "--workers", "1"]);
    let c = run("sc", &["--sample", "7", "--seed", "4"]);
    assert_eq!(a, b);
    assert_ne!(a.0, c.0);
    let v: Value = serde_json::from_str(&a.0).unwrap();
    assert_eq!(v["images"], 7);
    assert_eq!(v["sample"]["requested"], 7);
    assert_eq!(v["sample"]["seed"], 3);
    assert_eq!(v["source"]["records"], 23);
}

#[test]
fn jpeg_shards_work() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write(&shards, Codec::Jpeg, &images(9), 1 << 30);
    let out = tmp.path().join("pca.json");
    ok(&pca_args(&shards, &out, &[]));
    let v = read_json(&out);
    assert_eq!(v["source"]["codec"], "jpeg");
    assert_eq!(v["images"], 9);
    assert_eq!(v["mean_image"], Value::Null);
    // Lossy, but close to the raw pixels' statistics.
    let (mean, _) = expected(&images(9));
    let got = vec3(&v["scale_255"]["mean"]);
    for c in 0..3 {
        assert!((got[c] - mean[c]).abs() < 3.0, "{got:?} vs {mean:?}");
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pca.json");

    // Empty dataset.
    let empty = tmp.path().join("empty");
    write(&empty, Codec::Raw, &[], 1 << 30);
    let err = fails(&pca_args(&empty, &out, &[]));
    assert!(err.contains("no records"), "{err}");
    assert!(!out.exists());

    // Not a dataset.
    let nowhere = tmp.path().join("nowhere");
    let err = fails(&pca_args(&nowhere, &out, &[]));
    assert!(
        err.contains("nowhere") && err.contains("manifest.json"),
        "{err}"
    );

    // A flipped byte inside record 3 of a raw shard: the CRC check names it.
    let stride = u64::from(SIDE * SIDE * 3);
    let flipped = tmp.path().join("flipped");
    write(&flipped, Codec::Raw, &images(6), 1 << 30);
    let shard = flipped.join("train-00000.svs");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[(4096 + 3 * stride + 10) as usize] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let err = fails(&pca_args(&flipped, &out, &["--workers", "2"]));
    assert!(
        err.contains("train-00000.svs") && err.contains("record 3") && err.contains("checksum"),
        "{err}"
    );
    assert!(!out.exists());

    // Manifest and shard disagree (the shard was truncated).
    let truncated = tmp.path().join("truncated");
    write(&truncated, Codec::Raw, &images(6), 1 << 30);
    let shard = truncated.join("train-00000.svs");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let err = fails(&pca_args(&truncated, &out, &[]));
    assert!(
        err.contains("train-00000.svs") && err.contains("manifest"),
        "{err}"
    );

    // --sample 0 is refused by the parser.
    let err = fails(&pca_args(&flipped, &out, &["--sample", "0"]));
    assert!(err.contains("--sample"), "{err}");
}

#[test]
fn synth_then_shard_build_then_pca() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imagenet");
    ok(&[
        "synth",
        "--output",
        s(&root),
        "--classes",
        "3",
        "--per-class",
        "4",
        "--val-per-class",
        "1",
        "--seed",
        "5",
        "--min-side",
        "64",
        "--max-side",
        "160",
    ]);
    let shards = tmp.path().join("train");
    ok(&[
        "shard",
        "build",
        "--input",
        s(&root.join("train")),
        "--output",
        s(&shards),
        "--codec",
        "raw",
        "--size",
        "64",
    ]);
    let out = tmp.path().join("pca.json");
    let npy = tmp.path().join("mean.npy");
    let stdout = ok(&pca_args(&shards, &out, &["--mean-image", s(&npy)]));
    assert!(stdout.contains("12 images of 12 records"), "{stdout}");
    let v = read_json(&out);
    assert_eq!(v["images"], 12);
    assert_eq!(v["side"], 64);
    assert_eq!(v["source"]["split"], "train");
    assert_eq!(v["mean_image"]["shape"], serde_json::json!([3, 64, 64]));
    let vals = vec3(&v["scale_255"]["eigenvalues"]);
    assert!(vals[0] > vals[2] && vals[2] >= 0.0, "{vals:?}");
    assert_eq!(
        std::fs::metadata(&npy).unwrap().len(),
        128 + 3 * 64 * 64 * 4
    );
}

#[test]
fn an_output_that_is_a_directory_is_refused_before_the_pass_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write(&shards, Codec::Raw, &images(4), 1 << 30);
    let work = tmp.path().join("work");
    let taken = work.join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    let json = work.join("pca.json");
    let npy = work.join("mean.npy");
    for (args, bad) in [
        (pca_args(&shards, &taken, &[]), &taken),
        (
            pca_args(&shards, &json, &["--mean-image", s(&taken)]),
            &taken,
        ),
    ] {
        let err = fails(&args);
        assert!(
            err.contains(&format!("{} is a directory", bad.display())),
            "{err}"
        );
        // Nothing written, no `taken.tmp` or other leftover beside it.
        assert_eq!(names(&work), ["taken"], "{err}");
        assert!(names(&taken).is_empty());
    }
    // The mean image is checked before the pass too, not after the JSON is written.
    let err = fails(&pca_args(&shards, &json, &["--mean-image", s(&work)]));
    assert!(err.contains("is a directory"), "{err}");
    assert!(!json.exists() && !npy.exists());
}

#[cfg(unix)]
#[test]
fn a_full_disk_keeps_the_old_files_and_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write(&shards, Codec::Raw, &images(6), 1 << 30);
    let out_dir = tmp.path().join("stats");
    let json = out_dir.join("pca.json");
    let npy = out_dir.join("mean.npy");
    ok(&pca_args(&shards, &json, &["--mean-image", s(&npy)]));
    let (old_json, old_npy) = (std::fs::read(&json).unwrap(), std::fs::read(&npy).unwrap());
    // Another dataset, so a successful write would change both files.
    let other = tmp.path().join("other");
    write(&other, Codec::Raw, &images(3), 1 << 30);
    // Writes past 1 KiB fail (EFBIG) as on a full disk: both files are larger.
    for args in [
        pca_args(&other, &json, &["--mean-image", s(&npy)]),
        pca_args(&other, &json, &[]),
    ] {
        let mut cmd = sv_tests::supervision();
        cmd.args(&args);
        sv_tests::limit_file_size(&mut cmd, 1024);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("write failed"), "{err}");
        assert_eq!(std::fs::read(&json).unwrap(), old_json);
        assert_eq!(std::fs::read(&npy).unwrap(), old_npy);
        assert_eq!(names(&out_dir), ["mean.npy", "pca.json"], "{err}");
    }
}

#[test]
fn workers_zero_is_refused_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write(&shards, Codec::Raw, &images(2), 1 << 30);
    let out = tmp.path().join("pca.json");
    for flag in ["--workers", "--sample"] {
        let err = fails(&pca_args(&shards, &out, &[flag, "0"]));
        assert!(
            err.contains(flag)
                && err.contains("at least 1")
                && !err.contains("18446744073709551615"),
            "{err}"
        );
    }
    // No upper bound used to mean a thread per --workers (issue 26, item 3).
    let err = fails(&pca_args(
        &shards,
        &out,
        &["--workers", "18446744073709551615"],
    ));
    assert!(
        err.contains("--workers") && err.contains("must be at most 1024"),
        "{err}"
    );
    assert!(!out.exists());
}
