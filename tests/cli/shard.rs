//! `supervision shard build | verify | inspect | export` end to end on synth output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sv_tests::{fails, ok, png_dims, s, supervision};

/// synth output in a temp dir: `classes` x `per_class` train, 2 val per class.
fn synth(dir: &Path, classes: u32, per_class: u32) -> PathBuf {
    sv_tests::synth_imagenet(dir, (classes, per_class, 2), 7, &[])
}

/// Every file of a folder, by name, with its bytes.
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

fn build(input: &Path, output: &Path, extra: &[&str]) -> String {
    let mut args = vec!["shard", "build", "--input", s(input), "--output", s(output)];
    args.extend_from_slice(extra);
    ok(&args)
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn build_is_identical_for_any_worker_count_and_verifies() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 4, 6);
    for codec in ["raw", "jpeg"] {
        let one = t.path().join(format!("{codec}-w1"));
        let two = t.path().join(format!("{codec}-w3"));
        // 1 MiB shards hold 5 raw records: several shards, rotation exercised.
        let common = ["--codec", codec, "--max-shard-mib", "1"];
        let out = build(
            &root.join("train"),
            &one,
            &[&common[..], &["--workers", "1"]].concat(),
        );
        assert!(out.contains("24 records"), "{out}");
        build(
            &root.join("train"),
            &two,
            &[&common[..], &["--workers", "3"]].concat(),
        );
        let (a, b) = (snapshot(&one), snapshot(&two));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, bytes) in &a {
            assert!(
                bytes == &b[name],
                "{codec}: {name} differs between 1 and 3 workers"
            );
        }
        let m = manifest(&one);
        assert_eq!(m["records"], 24);
        assert_eq!(m["codec"], codec);
        if codec == "raw" {
            assert_eq!(m["shards"].as_array().unwrap().len(), 5);
        }
        let v = ok(&["shard", "verify", s(&one)]);
        assert!(v.contains("ok: 24 records"), "{v}");
        // Running it again is a no-op.
        let again = build(&root.join("train"), &one, &common);
        assert!(again.contains("up to date"), "{again}");
        assert_eq!(snapshot(&one), a);
    }
}

#[test]
fn val_flat_folder_takes_train_classes() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 3, 2);
    let train = t.path().join("train-shards");
    let val = t.path().join("val-shards");
    build(&root.join("train"), &train, &[]);
    // The labels file is found beside the flat val folder.
    let out = build(
        &root.join("val"),
        &val,
        &["--split", "val", "--classes-from", s(&train)],
    );
    assert!(out.contains("6 records"), "{out}");
    let (mt, mv) = (manifest(&train), manifest(&val));
    assert_eq!(mt["classes"], mv["classes"]);
    assert_eq!(mv["split"], "val");
    assert!(
        mv["shards"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("val-")
    );
    // Per-class counts match the synth layout: 2 val images per class.
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&["shard", "inspect", s(&val), "--json"])).unwrap();
    for c in inspect["classes"].as_array().unwrap() {
        assert_eq!(c["records"], 2, "{c}");
    }
    // Explicit labels file, `filename wnid` form, overrides discovery.
    let wnid0 = mt["classes"][0]["wnid"].as_str().unwrap().to_string();
    let mut files: Vec<_> = std::fs::read_dir(root.join("val"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let labels = t.path().join("labels.txt");
    std::fs::write(&labels, format!("{} {wnid0}\n", files[0])).unwrap();
    let one = t.path().join("one");
    let out = build(
        &root.join("val"),
        &one,
        &[
            "--split",
            "val",
            "--labels",
            s(&labels),
            "--classes-from",
            s(&train),
            "--max-reject-fraction",
            "1",
        ],
    );
    assert!(
        out.contains("1 records") && out.contains("5 of 6 files rejected"),
        "{out}"
    );
}

fn write_png_bomb(path: &Path) {
    // A valid PNG signature and IHDR claiming 100000 x 100000 RGBA, then junk.
    let mut b = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    b.extend_from_slice(&13u32.to_be_bytes());
    b.extend_from_slice(&ihdr);
    b.extend_from_slice(&crc32fast::hash(&ihdr).to_be_bytes());
    // A small IDAT (a zlib stream of nothing much) and IEND: well-formed chunks, so
    // only the declared size is wrong.
    for (kind, data) in [
        (
            &b"IDAT"[..],
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01][..],
        ),
        (b"IEND", &[]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(&chunk);
        b.extend_from_slice(&crc32fast::hash(&chunk).to_be_bytes());
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn bad_files_are_rejected_and_reported_never_fatal() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 2, 3);
    let train = root.join("train");
    let class_dir = std::fs::read_dir(&train)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    // A real baseline/progressive JPEG to damage (synth also writes quirks: a PNG named
    // .JPEG, CMYK and grayscale files).
    let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let bytes = files
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .find(|b| {
            b.starts_with(&[0xFF, 0xD8])
                && b.windows(2)
                    .any(|m| m[0] == 0xFF && matches!(m[1], 0xC0..=0xC2))
        })
        .expect("a JPEG among synth's files");
    std::fs::write(class_dir.join("zz_empty.JPEG"), b"").unwrap();
    std::fs::write(class_dir.join("zz_text.JPEG"), b"this is not an image").unwrap();
    std::fs::write(class_dir.join("zz_cut.JPEG"), &bytes[..bytes.len() / 3]).unwrap();
    // Cut with an end-of-image marker after the cut; a frame header taller than the
    // data: decoders grey-fill both, the build must refuse them.
    let mut cut_eoi = bytes[..bytes.len() / 2].to_vec();
    cut_eoi.extend_from_slice(&[0xFF, 0xD9]);
    std::fs::write(class_dir.join("zz_cut_eoi.JPEG"), &cut_eoi).unwrap();
    let mut tall = bytes.clone();
    let sof = tall
        .windows(2)
        .position(|m| m[0] == 0xFF && matches!(m[1], 0xC0..=0xC2))
        .unwrap();
    let h = u16::from_be_bytes([tall[sof + 5], tall[sof + 6]]);
    tall[sof + 5..sof + 7].copy_from_slice(&(h + 64).to_be_bytes());
    std::fs::write(class_dir.join("zz_tall.JPEG"), &tall).unwrap();
    write_png_bomb(&class_dir.join("zz_bomb.JPEG"));
    let out_dir = t.path().join("shards");
    let out = build(&train, &out_dir, &["--max-reject-fraction", "1"]);
    assert!(
        out.contains("6 records") && out.contains("6 of 12 files rejected"),
        "{out}"
    );
    let rejects: Vec<serde_json::Value> = std::fs::read_to_string(out_dir.join("rejects.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_name: BTreeMap<String, String> = rejects
        .iter()
        .map(|r| {
            let p = r["path"].as_str().unwrap();
            (
                p.rsplit('/').next().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect();
    assert_eq!(
        by_name.keys().collect::<Vec<_>>(),
        [
            "zz_bomb.JPEG",
            "zz_cut.JPEG",
            "zz_cut_eoi.JPEG",
            "zz_empty.JPEG",
            "zz_tall.JPEG",
            "zz_text.JPEG"
        ]
    );
    for name in ["zz_cut.JPEG", "zz_cut_eoi.JPEG", "zz_tall.JPEG"] {
        assert!(by_name[name].contains("truncated jpeg"), "{by_name:?}");
    }
    assert!(by_name["zz_bomb.JPEG"].contains("limit"), "{by_name:?}");
    assert!(by_name["zz_empty.JPEG"].contains("empty"), "{by_name:?}");
    ok(&["shard", "verify", s(&out_dir)]);

    // --strict: the first bad file is an error naming it; nothing is half-written.
    let strict_dir = t.path().join("strict");
    let err = fails(&[
        "shard",
        "build",
        "--input",
        s(&train),
        "--output",
        s(&strict_dir),
        "--strict",
    ]);
    assert!(
        err.contains("zz_bomb.JPEG") && err.contains("strict"),
        "{err}"
    );
    assert!(!strict_dir.join("manifest.json").exists());
}

#[test]
fn killed_build_resumes_to_identical_output() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 3, 40);
    let train = root.join("train");
    let reference = t.path().join("reference");
    let args = ["--codec", "jpeg", "--max-shard-mib", "1", "--workers", "1"];
    build(&train, &reference, &args);

    let resumed = t.path().join("resumed");
    let journal = resumed.join(".build-journal.jsonl");
    let mut child = supervision()
        .args([
            "shard",
            "build",
            "--input",
            s(&train),
            "--output",
            s(&resumed),
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has finished at least one shard, long before the end.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = std::fs::read_to_string(&journal)
            .map(|j| j.lines().count())
            .unwrap_or(0);
        if lines >= 2 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !resumed.join("manifest.json").exists(),
        "the build finished before it could be killed; the test needs more images"
    );
    let out = build(&train, &resumed, &args);
    assert!(out.contains("resumed after"), "{out}");
    assert_eq!(snapshot(&resumed), snapshot(&reference));
}

#[test]
fn verify_names_the_damaged_shard_and_record() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 2, 4);
    let out_dir = t.path().join("shards");
    build(&root.join("train"), &out_dir, &["--max-shard-mib", "1"]);
    let shard = out_dir.join("train-00001.svs");
    let mut b = std::fs::read(&shard).unwrap();
    b[4096 + 196_608 * 2 + 1000] ^= 0xff; // record 2 of the second shard
    std::fs::write(&shard, &b).unwrap();
    let err = fails(&["shard", "verify", s(&out_dir)]);
    assert!(
        err.contains("train-00001.svs: record 2: checksum mismatch"),
        "{err}"
    );

    std::fs::write(&shard, &b[..b.len() / 2]).unwrap();
    let err = fails(&["shard", "verify", s(&out_dir)]);
    assert!(
        err.contains("train-00001.svs") && err.contains("truncated"),
        "{err}"
    );
    // Reading commands refuse the damaged dataset with the same naming, no crash.
    let err = fails(&["shard", "inspect", s(&out_dir)]);
    assert!(err.contains("train-00001.svs"), "{err}");

    let err = fails(&["shard", "verify", s(t.path())]);
    assert!(err.contains("no manifest.json"), "{err}");
}

#[test]
fn inspect_and_export_show_what_was_stored() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 3, 3);
    let out_dir = t.path().join("shards");
    build(&root.join("train"), &out_dir, &["--codec", "jpeg"]);
    let text = ok(&["shard", "inspect", s(&out_dir)]);
    assert!(
        text.contains("records   9") && text.contains("codec     jpeg (quality 90, 4:2:0)"),
        "{text}"
    );
    let sheet = t.path().join("sheet.png");
    ok(&[
        "shard",
        "inspect",
        s(&out_dir),
        "--sheet",
        s(&sheet),
        "--per-class",
        "3",
    ]);
    let img = png_dims(&sheet);
    assert_eq!(img, (3 * 130 + 2, 3 * 130 + 2));

    let ex = t.path().join("export");
    let out = ok(&[
        "shard",
        "export",
        s(&out_dir),
        "--output",
        s(&ex),
        "--indices",
        "0,4,8",
    ]);
    assert!(out.contains("exported 3 records"), "{out}");
    let mut names: Vec<_> = std::fs::read_dir(&ex)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3);
    assert!(
        names[0].starts_with("00000000_0_") && names[2].starts_with("00000008_2_"),
        "{names:?}"
    );
    assert_eq!(png_dims(&ex.join(&names[1])), (256, 256));
    let err = fails(&[
        "shard",
        "export",
        s(&out_dir),
        "--output",
        s(&ex),
        "--indices",
        "99",
    ]);
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn refuses_to_overwrite_other_data() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 2, 2);
    let out_dir = t.path().join("shards");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("notes.txt"), b"mine").unwrap();
    let err = fails(&[
        "shard",
        "build",
        "--input",
        s(&root.join("train")),
        "--output",
        s(&out_dir),
    ]);
    assert!(err.contains("not empty"), "{err}");
    // --force builds beside it and leaves the stranger's file alone.
    build(&root.join("train"), &out_dir, &["--force"]);
    assert_eq!(std::fs::read(out_dir.join("notes.txt")).unwrap(), b"mine");
    // Other settings over an existing dataset need --force too.
    let err = fails(&[
        "shard",
        "build",
        "--input",
        s(&root.join("train")),
        "--output",
        s(&out_dir),
        "--size",
        "64",
    ]);
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn zero_workers_is_refused_in_words() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 2, 2);
    let out = t.path().join("shards");
    let err = fails(&[
        "shard",
        "build",
        "--input",
        s(&root.join("train")),
        "--output",
        s(&out),
        "--workers",
        "0",
    ]);
    assert!(
        err.contains("--workers") && err.contains("at least 1"),
        "{err}"
    );
    assert!(!out.exists());
}

/// Issue 26, item 3: every count that sizes threads or memory has an upper bound,
/// named with its flag; item 14: the reject bound is a fraction.
#[test]
fn counts_that_size_threads_or_memory_are_bounded_by_flag() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 2, 2);
    let out = t.path().join("shards");
    let input = root.join("train");
    for (flag, value, want) in [
        ("--workers", "18446744073709551615", "at most 1024"),
        ("--workers", "1025", "at most 1024"),
        ("--max-shard-mib", "18446744073709551615", "at most 65536"),
        ("--max-reject-fraction", "1.5", "between 0 and 1"),
        ("--max-reject-fraction", "NaN", "between 0 and 1"),
    ] {
        let err = fails(&[
            "shard",
            "build",
            "--input",
            s(&input),
            "--output",
            s(&out),
            flag,
            value,
        ]);
        assert!(
            err.contains(flag) && err.contains(want),
            "{flag} {value}: {err}"
        );
        assert!(!out.exists());
    }
    build(&input, &out, &[]);
    let err = fails(&["shard", "verify", s(&out), "--workers", "100000"]);
    assert!(
        err.contains("--workers") && err.contains("at most 1024"),
        "{err}"
    );
}

/// Issue 26, item 14: an input of which nothing can be used is an error, not an empty
/// dataset; so is one mostly rejected (a wholesale mislabelling), with the flag named.
#[test]
fn an_empty_or_mislabelled_build_fails_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 2, 3);
    let train = t.path().join("train-shards");
    build(&root.join("train"), &train, &[]);
    let csv = std::fs::read_to_string(root.join("LOC_val_solution.csv")).unwrap();
    let val = root.join("val");
    let val_build = |labels: &Path, out: &Path, extra: &[&str]| {
        let mut a = vec![
            "shard",
            "build",
            "--input",
            s(&val),
            "--output",
            s(out),
            "--split",
            "val",
            "--labels",
            s(labels),
            "--classes-from",
            s(&train),
        ];
        a.extend_from_slice(extra);
        fails(&a)
    };
    // val labelled with upper-case wnids, all but the first line: most files have no
    // class of the list
    let mostly = t.path().join("mostly.csv");
    let mut lines: Vec<String> = csv.lines().map(String::from).collect();
    for l in lines.iter_mut().skip(2) {
        *l = l.replace(",n", ",N");
    }
    std::fs::write(&mostly, lines.join("\n")).unwrap();
    let out = t.path().join("val");
    let err = val_build(&mostly, &out, &[]);
    assert!(
        err.contains("rejected") && err.contains("--max-reject-fraction"),
        "{err}"
    );
    assert!(!out.join("manifest.json").exists());
    // every one: not a dataset, whatever the bound
    let all = t.path().join("all.csv");
    std::fs::write(&all, csv.replace(",n", ",N")).unwrap();
    let err = val_build(&all, &out, &["--max-reject-fraction", "1"]);
    assert!(err.contains("no usable images"), "{err}");
    assert!(!out.join("manifest.json").exists());
}

#[test]
fn a_second_build_process_fails_at_once_and_the_first_finishes_intact() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 3, 40);
    let train = root.join("train");
    let out = t.path().join("shards");
    let args = ["--codec", "jpeg", "--max-shard-mib", "1", "--workers", "1"];
    let mut first = supervision()
        .args(["shard", "build", "--input", s(&train), "--output", s(&out)])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it has started writing (its journal exists).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.join(".build-journal.jsonl").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    for extra in [&[][..], &["--force"][..]] {
        let t0 = Instant::now();
        let mut a = vec!["shard", "build", "--input", s(&train), "--output", s(&out)];
        a.extend_from_slice(&args);
        a.extend_from_slice(extra);
        let err = fails(&a);
        assert!(
            err.contains(&format!("pid {}", first.id())) && err.contains("another build"),
            "{extra:?}: {err}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "did not fail at once"
        );
    }
    let status = first.wait().unwrap();
    assert!(status.success());
    let v = ok(&["shard", "verify", s(&out)]);
    assert!(v.contains("ok: 120 records"), "{v}");
}

#[test]
fn build_errors_say_what_where_and_why_in_words() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 2, 2);
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let build_err = |input: &Path, output: &Path, extra: &[&str]| {
        let mut a = vec!["shard", "build", "--input", s(input), "--output", s(output)];
        a.extend_from_slice(extra);
        fails(&a)
    };
    let cases = [
        (
            build_err(&t.path().join("nope"), &t.path().join("o1"), &[]),
            "nope does not exist",
        ),
        (
            build_err(&root.join("train"), &file, &[]),
            "a-file is a regular file, not a folder",
        ),
        (
            build_err(&root.join("train"), &root.join("train"), &[]),
            "is the input folder",
        ),
        (
            build_err(
                &root.join("val"),
                &t.path().join("o2"),
                &["--labels", s(&t.path().join("none.txt"))],
            ),
            "none.txt: cannot open: no such file or directory",
        ),
    ];
    for (err, want) in cases {
        assert!(err.contains(want), "want {want:?} in {err}");
        assert!(!err.contains("os error") && !err.contains("Os {"), "{err}");
    }
}
