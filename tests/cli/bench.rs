//! `supervision bench pipeline` end to end: the report's fields, and the digest of
//! the batch contents equal across worker counts and different across seeds.

use std::path::Path;

use sv_core::{ClassInfo, Split};
use sv_shard::{Codec, DatasetWriter, WriterConfig};
use sv_tests::{fails, ok, s};

/// `n` generated 64x64 images in 3 classes.
fn dataset(dir: &Path, n: usize, codec: Codec) {
    let classes = (0..3)
        .map(|c| ClassInfo {
            wnid: format!("n{c:08}"),
            name: format!("class {c}"),
        })
        .collect();
    let config = WriterConfig {
        split: Split::Train,
        side: 64,
        codec,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes,
        max_shard_bytes: 200_000,
    };
    let mut w = DatasetWriter::create(dir, config).unwrap();
    for i in 0..n {
        let img: Vec<u8> = (0..64 * 64 * 3)
            .map(|p| ((p / 192 + p % 192 + i * 11) % 256) as u8)
            .collect();
        w.push((i % 3) as u32, &img).unwrap();
    }
    w.finish().unwrap();
}

/// `bench pipeline` over `dir`: 7 batches of 8 crops of 56, JSON report, plus `extra`.
fn bench_args<'a>(dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "bench",
        "pipeline",
        "--shards",
        s(dir),
        "--batch-size",
        "8",
        "--batches",
        "7",
        "--crop",
        "56",
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

fn bench(dir: &Path, extra: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(&bench_args(dir, extra))).expect("JSON report")
}

fn digest(v: &serde_json::Value) -> String {
    v["digest"].as_str().expect("digest").to_string()
}

#[test]
fn digest_is_the_same_for_any_worker_count() {
    let tmp = tempfile::tempdir().unwrap();
    for codec in [Codec::Raw, Codec::Jpeg] {
        let dir = tmp.path().join(codec.as_str());
        dataset(&dir, 40, codec);
        for output in ["u8", "f32"] {
            let one = bench(&dir, &["--workers", "1", "--seed", "5", "--output", output]);
            assert_eq!(one["images"], 7 * 8);
            assert_eq!(one["codec"], codec.as_str());
            assert_eq!(one["output"], output);
            assert!(one["images_per_s"].as_f64().unwrap() > 0.0);
            assert!(one["stage_seconds"]["augment"].as_f64().unwrap() > 0.0);
            for workers in ["2", "3"] {
                let many = bench(
                    &dir,
                    &["--workers", workers, "--seed", "5", "--output", output],
                );
                assert_eq!(digest(&one), digest(&many), "{codec:?} {output} {workers}");
            }
            // releasing pages after use changes memory, never the batches
            let released = bench(
                &dir,
                &[
                    "--workers",
                    "2",
                    "--seed",
                    "5",
                    "--output",
                    output,
                    "--release-pages",
                ],
            );
            assert_eq!(
                digest(&one),
                digest(&released),
                "{codec:?} {output} released"
            );
            assert_eq!(released["release_pages"], true);
            if cfg!(target_os = "linux") {
                let m = &released["memory"];
                let (rss, anon) = (m["peak_rss_mib"].as_f64(), m["peak_anon_mib"].as_f64());
                assert!(rss.unwrap() >= anon.unwrap() && anon.unwrap() > 0.0, "{m}");
            }
            let other = bench(&dir, &["--workers", "2", "--seed", "6", "--output", output]);
            assert_ne!(digest(&one), digest(&other), "the seed changes the batches");
        }
    }
}

#[test]
fn options_change_the_batches_and_text_report_prints() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path(), 24, Codec::Raw);
    let base = digest(&bench(tmp.path(), &["--workers", "2"]));
    let nchw = bench(tmp.path(), &["--workers", "2", "--layout", "nchw"]);
    assert_eq!(nchw["layout"], "nchw");
    assert_ne!(base, digest(&nchw));
    // the digest covers the lighting offsets that travel with uint8 batches
    let dark = digest(&bench(tmp.path(), &["--lighting", "none"]));
    assert_ne!(base, dark);
    let f = digest(&bench(tmp.path(), &["--output", "f32"]));
    let f_dark = digest(&bench(
        tmp.path(),
        &["--output", "f32", "--lighting", "none"],
    ));
    assert_ne!(f, f_dark);

    let text = ok(&[
        "bench",
        "pipeline",
        "--shards",
        s(tmp.path()),
        "--batch-size",
        "8",
        "--batches",
        "2",
        "--crop",
        "32",
        "--verify",
    ]);
    assert!(text.contains("images/s"), "{text}");
    assert!(text.contains("digest "), "{text}");
    if cfg!(target_os = "linux") {
        assert!(text.contains("peak resident memory"), "{text}");
    }
}

#[test]
fn stats_file_from_pca_compute_drives_lighting_and_normalisation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    dataset(&dir, 24, Codec::Raw);
    let stats = tmp.path().join("pca.json");
    ok(&["pca", "compute", "--shards", s(&dir), "--output", s(&stats)]);
    let with = bench(&dir, &["--output", "f32", "--stats", s(&stats)]);
    let without = bench(&dir, &["--output", "f32"]);
    assert_ne!(digest(&with), digest(&without));
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing-here");
    let err = fails(&["bench", "pipeline", "--shards", s(&missing)]);
    assert!(err.contains("nothing-here"), "{err}");
    let dir = tmp.path().join("d");
    dataset(&dir, 16, Codec::Raw);
    let err = fails(&[
        "bench",
        "pipeline",
        "--shards",
        s(&dir),
        "--batch-size",
        "4",
        "--crop",
        "65",
    ]);
    assert!(err.contains("crop"), "{err}");
    let err = fails(&[
        "bench",
        "pipeline",
        "--shards",
        s(&dir),
        "--batch-size",
        "17",
    ]);
    assert!(err.contains("full batch"), "{err}");
}

#[test]
fn a_stats_file_that_cannot_normalise_is_refused_naming_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    dataset(&dir, 16, Codec::Raw);
    let good = tmp.path().join("pca.json");
    ok(&["pca", "compute", "--shards", s(&dir), "--output", s(&good)]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let cases: &[(&str, Edit)] = &[
        ("scale_255.std[1]", |v| {
            v["scale_255"]["std"][1] = 0.0.into()
        }),
        ("scale_unit.std[0]", |v| {
            v["scale_unit"]["std"][0] = (-0.2).into()
        }),
        ("scale_255.eigenvalues[2]", |v| {
            v["scale_255"]["eigenvalues"][2] = (-1.0).into()
        }),
        ("lighting.alpha_std", |v| {
            v["lighting"]["alpha_std"] = (-0.1).into()
        }),
        ("scale_255.mean[2]", |v| {
            v["scale_255"]["mean"][2] = 300.0.into()
        }),
    ];
    for (field, edit) in cases {
        let mut bad = v.clone();
        edit(&mut bad);
        let path = tmp.path().join("bad.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&bad).unwrap()).unwrap();
        for output in ["f32", "u8"] {
            let err = fails(&bench_args(
                &dir,
                &["--output", output, "--stats", s(&path)],
            ));
            assert!(
                err.contains("bad.json") && err.contains(field),
                "{field}, {output}:\n{err}"
            );
        }
    }
    // Values JSON cannot carry as numbers are refused in words too.
    let path = tmp.path().join("inf.json");
    let text = serde_json::to_string_pretty(&v).unwrap().replacen(
        "\"alpha_std\": 0.1",
        "\"alpha_std\": 1e999",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let err = fails(&[
        "bench",
        "pipeline",
        "--shards",
        s(&dir),
        "--stats",
        s(&path),
    ]);
    assert!(err.contains("inf.json"), "{err}");
}

#[test]
fn zero_counts_are_refused_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    dataset(&dir, 8, Codec::Raw);
    for flag in ["--workers", "--batch-size", "--batches"] {
        let err = fails(&["bench", "pipeline", "--shards", s(&dir), flag, "0"]);
        assert!(
            err.contains(flag)
                && err.contains("at least 1")
                && !err.contains("18446744073709551615"),
            "{flag}:\n{err}"
        );
    }
}

#[test]
fn counts_past_their_limits_are_refused_naming_flag_and_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    dataset(&dir, 8, Codec::Raw);
    // u64::MAX workers panicked with "capacity overflow"; 1e8 took 17 GB and
    // thousands of threads; a batch of 2^62 overflowed the buffer size (issue 26,
    // item 3).
    for (flag, value, want) in [
        ("--workers", "18446744073709551615", "must be at most 1024"),
        ("--workers", "100000000", "must be at most 1024"),
        ("--workers", "1e8", "not a whole number"),
        (
            "--batch-size",
            "4611686018427387904",
            "must be at most 65536",
        ),
        ("--batch-size", "65537", "must be at most 65536"),
    ] {
        let err = fails(&["bench", "pipeline", "--shards", s(&dir), flag, value]);
        assert!(
            err.contains(&format!("'{value}' for '{flag}")) && err.contains(want),
            "{flag} {value}:\n{err}"
        );
    }
    // A sum of two counts that no longer fits is refused, not wrapped or panicking.
    let err = fails(&[
        "bench",
        "pipeline",
        "--shards",
        s(&dir),
        "--batch-size",
        "2",
        "--warmup",
        "18446744073709551615",
        "--batches",
        "2",
    ]);
    assert!(
        err.contains("--warmup") && err.contains("--batches"),
        "{err}"
    );
    // At the limits the flags are taken (the crop, not the count, refuses this one).
    let err = fails(&[
        "bench",
        "pipeline",
        "--shards",
        s(&dir),
        "--workers",
        "1024",
        "--batch-size",
        "65536",
        "--crop",
        "65",
    ]);
    assert!(!err.contains("must be at most"), "{err}");
}
