//! `shard verify | inspect | export` against hostile datasets: special files where
//! shards or the manifest should be, edited manifests, rewritten headers, huge
//! contact sheets. Each must end promptly with a message in words, never hang,
//! panic or print Rust debug text.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sv_core::{ClassInfo, Split};
use sv_shard::{Codec, DatasetWriter, MANIFEST_FILE, Manifest, WriterConfig};
use sv_tests::{fails, ok, png_dims, s, supervision};

const SIDE: u32 = 8;

/// `n` records in `classes` classes (record i has label i % classes), 8x8 raw, a
/// few records per shard so there are several shards.
fn dataset(dir: &Path, n: u32, classes: u32, codec: Codec) -> Manifest {
    let config = WriterConfig {
        split: Split::Train,
        side: SIDE,
        codec,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes: (0..classes)
            .map(|c| ClassInfo {
                wnid: format!("n{c:08}"),
                name: format!("class {c}"),
            })
            .collect(),
        max_shard_bytes: 4096 + 4 * (192 + 24),
    };
    let mut w = DatasetWriter::create(dir, config).unwrap();
    for i in 0..n {
        let px: Vec<u8> = (0..192).map(|p| (p * 7 + i * 13) as u8).collect();
        w.push(i % classes, &px).unwrap();
    }
    w.finish().unwrap()
}

/// Run `supervision ARGS` with a deadline: a hang is a test failure, not a stuck CI.
fn run_bounded(args: &[&str]) -> Output {
    let mut child = supervision()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "supervision {args:?} hung (killed after 30 s); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run with a deadline and expect failure; returns stderr.
fn fails_bounded(args: &[&str]) -> String {
    let out = run_bounded(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "supervision {args:?} succeeded; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} did not exit 1:\n{err}"
    );
    assert_words(&err);
    err
}

/// No Rust debug rendering or panic in a message meant for people.
fn assert_words(err: &str) {
    for bad in [
        "Some(", "None", "Os {", "IoError", "kind:", "panicked", "\\\"",
    ] {
        assert!(!err.contains(bad), "debug text {bad:?} in:\n{err}");
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(s(path)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// The commands that read a dataset, each of which must fail the same way.
fn readers(dir: &Path, scratch: &Path) -> Vec<Vec<String>> {
    let d = s(dir).to_string();
    let out = scratch.join("out");
    vec![
        vec!["shard".into(), "verify".into(), d.clone()],
        vec!["shard".into(), "inspect".into(), d.clone()],
        vec![
            "shard".into(),
            "export".into(),
            d.clone(),
            "--output".into(),
            s(&out.join("export")).into(),
        ],
        vec![
            "pca".into(),
            "compute".into(),
            "--shards".into(),
            d.clone(),
            "--output".into(),
            s(&out.join("pca.json")).into(),
        ],
        vec![
            "bench".into(),
            "pipeline".into(),
            "--shards".into(),
            d,
            "--batch-size".into(),
            "2".into(),
            "--batches".into(),
            "1".into(),
            "--crop".into(),
            "4".into(),
        ],
    ]
}

fn all_fail_with(dir: &Path, scratch: &Path, want: &[&str]) {
    for args in readers(dir, scratch) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails_bounded(&args);
        for w in want {
            assert!(err.contains(w), "{args:?}: want {w:?} in:\n{err}");
        }
    }
}

#[test]
fn special_files_in_place_of_a_shard_or_the_manifest_fail_at_once() {
    let t = tempfile::tempdir().unwrap();
    let m = dataset(&t.path().join("ref"), 10, 2, Codec::Raw);
    assert!(m.shards.len() >= 3);
    let fresh = |name: &str| -> PathBuf {
        let d = t.path().join(name);
        dataset(&d, 10, 2, Codec::Raw);
        d
    };

    // A FIFO where a shard should be: a plain open would wait for a writer forever.
    let d = fresh("fifo-shard");
    let shard = d.join(&m.shards[1].name);
    std::fs::remove_file(&shard).unwrap();
    mkfifo(&shard);
    all_fail_with(&d, t.path(), &["train-00001.svs", "FIFO"]);

    // A symbolic link to a FIFO elsewhere.
    let d = fresh("link-shard");
    let shard = d.join(&m.shards[0].name);
    std::fs::remove_file(&shard).unwrap();
    let fifo = t.path().join("elsewhere.fifo");
    mkfifo(&fifo);
    std::os::unix::fs::symlink(&fifo, &shard).unwrap();
    all_fail_with(&d, t.path(), &["train-00000.svs", "FIFO"]);

    // A character device that reads zeros forever.
    let d = fresh("dev-shard");
    let shard = d.join(&m.shards[2].name);
    std::fs::remove_file(&shard).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &shard).unwrap();
    all_fail_with(&d, t.path(), &["train-00002.svs", "character device"]);

    // A directory in place of a shard is not a truncated file.
    let d = fresh("dir-shard");
    let shard = d.join(&m.shards[1].name);
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    for args in readers(&d, t.path()) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails_bounded(&args);
        assert!(
            err.contains("train-00001.svs")
                && err.contains("is a directory, not a regular file")
                && !err.contains("truncated"),
            "{args:?}:\n{err}"
        );
    }

    // The manifest itself: a FIFO, a directory.
    let d = fresh("fifo-manifest");
    std::fs::remove_file(d.join(MANIFEST_FILE)).unwrap();
    mkfifo(&d.join(MANIFEST_FILE));
    all_fail_with(&d, t.path(), &["manifest.json", "FIFO"]);
    let d = fresh("dir-manifest");
    std::fs::remove_file(d.join(MANIFEST_FILE)).unwrap();
    std::fs::create_dir(d.join(MANIFEST_FILE)).unwrap();
    all_fail_with(&d, t.path(), &["manifest.json is a directory"]);
}

/// Rewrite the manifest with `edit` applied to its JSON, without re-sealing it.
fn edit_json(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn an_edited_manifest_fails_verify_and_every_reader() {
    let t = tempfile::tempdir().unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: &[(&str, Edit)] = &[
        ("swapped classes", |v| {
            v["classes"].as_array_mut().unwrap().swap(0, 1)
        }),
        ("renamed class", |v| {
            v["classes"][1]["wnid"] = "n99999999".into()
        }),
        ("swapped shards", |v| {
            v["shards"].as_array_mut().unwrap().swap(0, 1)
        }),
        ("split", |v| v["split"] = "val".into()),
    ];
    for (what, edit) in edits {
        let d = t.path().join(what.replace(' ', "-"));
        dataset(&d, 10, 3, Codec::Raw);
        edit_json(&d, edit);
        let err = fails_bounded(&["shard", "verify", s(&d)]);
        assert!(
            err.contains("manifest.json") && err.contains("checksum"),
            "{what}:\n{err}"
        );
        all_fail_with(&d, t.path(), &["manifest.json", "checksum"]);
    }
    // A manifest without its checksum cannot be trusted either.
    let d = t.path().join("unsealed");
    dataset(&d, 10, 3, Codec::Raw);
    edit_json(&d, |v| {
        v.as_object_mut().unwrap().remove("checksum").unwrap();
    });
    let err = fails_bounded(&["shard", "inspect", s(&d)]);
    assert!(err.contains("no checksum"), "{err}");
}

/// Re-seal an edited manifest, as a tool that knows the format would: the reader's
/// own checks must still catch what is wrong.
fn edit_sealed(dir: &Path, edit: impl FnOnce(&mut Manifest)) {
    let path = dir.join(MANIFEST_FILE);
    let mut m: Manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    m.seal();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn crc_fields_parse_as_exactly_eight_lowercase_hex_digits() {
    let t = tempfile::tempdir().unwrap();
    for bad in [
        "+abcdef1",
        "-0000001",
        "ABCDEF12",
        "0x123456",
        " abcdef1",
        "abcdef1",
        "abcdef123",
    ] {
        let d = t
            .path()
            .join(format!("crc-{}", bad.trim().replace('+', "p")));
        dataset(&d, 10, 2, Codec::Raw);
        edit_sealed(&d, |m| m.shards[1].crc32 = bad.into());
        let err = fails_bounded(&["shard", "verify", s(&d)]);
        assert!(
            err.contains("crc32") && err.contains(&format!("{bad:?}")) && err.contains("hex"),
            "{bad:?}:\n{err}"
        );
        // The manifest's own checksum field is read as strictly.
        let d = t
            .path()
            .join(format!("sum-{}", bad.trim().replace('+', "p")));
        dataset(&d, 10, 2, Codec::Raw);
        edit_json(&d, |v| v["checksum"] = bad.into());
        let err = fails_bounded(&["shard", "inspect", s(&d)]);
        assert!(
            err.contains("checksum") && err.contains("hex"),
            "{bad:?}:\n{err}"
        );
    }
}

/// Rewrite a shard's header fields and fix its header CRC, as a buggy or hostile
/// writer might: only the reader's consistency checks stand in the way.
fn rewrite_header(path: &Path, edit: impl FnOnce(&mut [u8])) {
    let mut b = std::fs::read(path).unwrap();
    edit(&mut b[..60]);
    let crc = crc32fast::hash(&b[..56]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

#[test]
fn inconsistent_shard_headers_are_described_in_words() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    let m = dataset(&d, 10, 2, Codec::Raw);
    // The index offset moved: the header implies another file length.
    rewrite_header(&d.join(&m.shards[0].name), |h| {
        let x = u64::from_le_bytes(h[40..48].try_into().unwrap()) + 24;
        h[40..48].copy_from_slice(&x.to_le_bytes());
    });
    let err = fails_bounded(&["shard", "verify", s(&d)]);
    assert!(
        err.contains("train-00000.svs") && err.contains("header implies"),
        "{err}"
    );
    // A record count so large the implied length overflows.
    let d = t.path().join("e");
    let m = dataset(&d, 10, 2, Codec::Raw);
    rewrite_header(&d.join(&m.shards[0].name), |h| {
        h[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    });
    let err = fails_bounded(&["shard", "inspect", s(&d)]);
    assert!(err.contains("train-00000.svs"), "{err}");
}

/// `shard inspect DIR --sheet SHEET --per-class N`.
fn sheet_args<'a>(dir: &'a Path, sheet: &'a Path, per_class: &'a str) -> [&'a str; 7] {
    [
        "shard",
        "inspect",
        s(dir),
        "--sheet",
        s(sheet),
        "--per-class",
        per_class,
    ]
}

#[test]
fn contact_sheet_size_is_bounded_and_checked() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    // 2 classes of 500 records each: 8px tiles, so 500 in a row is 5,002 px wide.
    dataset(&d, 1000, 2, Codec::Raw);
    let sheet = t.path().join("sheet.png");
    // Far more than any class holds: the sheet is as wide as the fullest row.
    ok(&sheet_args(&d, &sheet, "100000"));
    assert_eq!(png_dims(&sheet), (500 * 10 + 2, 2 * 10 + 2));
    // Values whose arithmetic would wrap.
    for huge in ["18446744073709551615", "4294967296", "429496730"] {
        let out = run_bounded(&sheet_args(&d, &sheet, huge));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "--per-class {huge}:\n{err}");
        assert_words(&err);
    }
    // A sheet wider than the limit is refused before anything is drawn, saying why.
    let big = t.path().join("big");
    dataset(&big, 2000, 1, Codec::Raw);
    let wide = t.path().join("wide.png");
    let err = fails_bounded(&sheet_args(&big, &wide, "2000"));
    assert!(
        err.contains("--per-class") && err.contains("pixels"),
        "{err}"
    );
    assert!(!wide.exists());
    let err = fails(&sheet_args(&d, &sheet, "0"));
    assert!(
        err.contains("--per-class") && err.contains("at least 1"),
        "{err}"
    );
    // A sheet path that is a directory leaves nothing behind.
    let err = fails_bounded(&["shard", "inspect", s(&d), "--sheet", s(t.path())]);
    assert!(err.contains("is a directory"), "{err}");
}

#[test]
fn verify_workers_zero_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    dataset(&d, 4, 2, Codec::Raw);
    let err = fails(&["shard", "verify", s(&d), "--workers", "0"]);
    assert!(
        err.contains("--workers") && err.contains("at least 1"),
        "{err}"
    );
    assert!(ok(&["shard", "verify", s(&d), "--workers", "1"]).contains("ok: 4 records"));
}

/// A build's own records (`build.json`, the journal), a part's record read by `shard
/// merge`, and the metrics file read by `plot`: a FIFO in place of any of them is an
/// error naming it at once, never a wait (issue 15, item 9).
#[test]
fn special_files_in_place_of_build_records_or_metrics_fail_at_once() {
    let t = tempfile::tempdir().unwrap();
    let syn = t.path().join("syn");
    ok(&[
        "synth",
        "--output",
        s(&syn),
        "--classes",
        "2",
        "--per-class",
        "2",
        "--val-per-class",
        "1",
        "--min-side",
        "40",
        "--max-side",
        "60",
    ]);
    let input = syn.join("train");
    let build = |out: &Path, part: &str| -> Vec<String> {
        [
            "shard",
            "build",
            "--input",
            s(&input),
            "--output",
            s(out),
            "--size",
            "16",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain(["--part".to_string(), part.to_string()])
        .collect()
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&args);
    };
    let fail = |args: &[String]| -> String {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_bounded(&args)
    };
    let (p0, p1) = (t.path().join("p0"), t.path().join("p1"));
    run(&build(&p0, "0/2"));
    run(&build(&p1, "1/2"));
    for name in ["build.json", ".build-journal.jsonl"] {
        std::fs::remove_file(p1.join("build.json")).unwrap();
        let _ = std::fs::remove_file(p1.join(".build-journal.jsonl"));
        mkfifo(&p1.join(name));
        // the same build again (it would be "up to date" or resume)
        let err = fail(&build(&p1, "1/2"));
        assert!(err.contains(name) && err.contains("FIFO"), "{name}:\n{err}");
        if name == "build.json" {
            let merged = t.path().join("merged");
            let err = fail(&[
                "shard".into(),
                "merge".into(),
                "--output".into(),
                s(&merged).into(),
                s(&p0).into(),
                s(&p1).into(),
            ]);
            assert!(err.contains(name) && err.contains("FIFO"), "merge:\n{err}");
        }
        std::fs::remove_file(p1.join(name)).unwrap();
        run(&[build(&p1, "1/2"), vec!["--force".into()]].concat());
    }
    let metrics = t.path().join("metrics.jsonl");
    mkfifo(&metrics);
    let err = fails_bounded(&["plot", s(&metrics), "--output", s(&t.path().join("m.svg"))]);
    assert!(
        err.contains("metrics.jsonl") && err.contains("FIFO"),
        "{err}"
    );
}
