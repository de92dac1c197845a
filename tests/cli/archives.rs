//! `shard build` from ImageNet's archives as downloaded (`synth --archives` makes
//! them): byte-identical to the extracted tree, resumable, and every bad archive a
//! reject or a clear error naming the archive and member.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sv_tests::{fails, ok, s, supervision};

const TRAIN_TAR: &str = "ILSVRC2012_img_train.tar";
const VAL_TAR: &str = "ILSVRC2012_img_val.tar";
const DEVKIT: &str = "ILSVRC2012_devkit_t12.tar.gz";

fn synth(dir: &Path, classes: u32, per_class: u32, val: u32) -> PathBuf {
    sv_tests::synth_imagenet(dir, (classes, per_class, val), 11, &["--archives"])
}

fn build(input: &Path, output: &Path, extra: &[&str]) -> String {
    let mut args = vec!["shard", "build", "--input", s(input), "--output", s(output)];
    args.extend_from_slice(extra);
    ok(&args)
}

fn build_fails(input: &Path, output: &Path, extra: &[&str]) -> String {
    let mut args = vec!["shard", "build", "--input", s(input), "--output", s(output)];
    args.extend_from_slice(extra);
    fails(&args)
}

/// The dataset files that depend only on the records (not on where they came from).
fn dataset(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".svs") || n == "manifest.json" || n == "rejects.jsonl")
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

#[test]
fn archives_build_the_same_bytes_as_the_extracted_tree() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 4, 6, 3);
    let common = ["--max-shard-mib", "1", "--workers", "2"];
    let tree = t.path().join("train-tree");
    let tar = t.path().join("train-tar");
    build(&root.join("train"), &tree, &common);
    let out = build(&root.join(TRAIN_TAR), &tar, &common);
    assert!(out.contains("24 records"), "{out}");
    assert_eq!(dataset(&tree), dataset(&tar));
    ok(&["shard", "verify", s(&tar)]);

    // Val: the flat folder with Kaggle's csv, against the val tar with the devkit
    // (archive, extracted folder, or its two files), all with train's classes.
    let by_csv = t.path().join("val-csv");
    let val_args = ["--split", "val", "--classes-from", s(&tree)];
    build(&root.join("val"), &by_csv, &val_args);
    let devkit_dir = t.path().join("devkit");
    std::fs::create_dir_all(&devkit_dir).unwrap();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(root.join(DEVKIT)).unwrap());
    tar::Archive::new(gz).unpack(&devkit_dir).unwrap();
    let data = devkit_dir.join("ILSVRC2012_devkit_t12/data");
    let meta = data.join("meta.mat");
    let truth = data.join("ILSVRC2012_validation_ground_truth.txt");
    let devkit_tar = root.join(DEVKIT);
    let kits: [Vec<&str>; 3] = [
        vec!["--devkit", s(&devkit_tar)],
        vec!["--devkit", s(&devkit_dir)],
        vec!["--devkit", s(&meta), "--devkit", s(&truth)],
    ];
    for (n, kit) in kits.iter().enumerate() {
        let out_dir = t.path().join(format!("val-devkit-{n}"));
        let mut args = val_args.to_vec();
        args.extend_from_slice(kit);
        let out = build(&root.join(VAL_TAR), &out_dir, &args);
        assert!(out.contains("12 records"), "{out}");
        assert_eq!(dataset(&by_csv), dataset(&out_dir), "devkit form {n}");
    }
    // The devkit also labels the extracted val folder.
    let folder = t.path().join("val-folder-devkit");
    let mut args = val_args.to_vec();
    args.extend_from_slice(&["--devkit", s(&devkit_dir)]);
    build(&root.join("val"), &folder, &args);
    assert_eq!(dataset(&by_csv), dataset(&folder));

    // Without --classes-from, the class names come from meta.mat's words.
    let own = t.path().join("val-own");
    build(
        &root.join(VAL_TAR),
        &own,
        &["--split", "val", "--devkit", s(&root.join(DEVKIT))],
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(own.join("manifest.json")).unwrap()).unwrap();
    let names = std::fs::read_to_string(root.join("LOC_synset_mapping.txt")).unwrap();
    for c in m["classes"].as_array().unwrap() {
        let line = format!(
            "{} {}",
            c["wnid"].as_str().unwrap(),
            c["name"].as_str().unwrap()
        );
        assert!(
            names.lines().any(|l| l == line),
            "{line} not in the mapping"
        );
    }
}

#[test]
fn a_build_from_a_tar_killed_mid_way_resumes_to_identical_output() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 3, 40, 0);
    let archive = root.join(TRAIN_TAR);
    let args = ["--codec", "jpeg", "--max-shard-mib", "1", "--workers", "1"];
    let reference = t.path().join("reference");
    build(&archive, &reference, &args);
    let resumed = t.path().join("resumed");
    let mut child = supervision()
        .args([
            "shard",
            "build",
            "--input",
            s(&archive),
            "--output",
            s(&resumed),
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = resumed.join(".build-journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && std::fs::read_to_string(&journal).map_or(0, |j| j.lines().count()) < 2
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !resumed.join("manifest.json").exists(),
        "the build finished before it could be killed"
    );
    let out = build(&archive, &resumed, &args);
    assert!(out.contains("resumed after"), "{out}");
    assert_eq!(dataset(&resumed), dataset(&reference));
}

/// The members of a tar file: (name, bytes).
fn members(path: &Path) -> Vec<(String, Vec<u8>)> {
    members_of(&std::fs::read(path).unwrap())
}

/// Append a member with any name (`..` included) and type.
fn raw_member(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_331_596_800);
    h.set_entry_type(kind);
    if kind == tar::EntryType::Symlink {
        h.set_link_name("n90000000_1.JPEG").unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn tar_bytes(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    b.into_inner().unwrap()
}

#[test]
fn bad_archive_members_are_rejects_and_damaged_archives_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 3, 3, 2);
    let outer = members(&root.join(TRAIN_TAR));
    let inner0 = members_of(&outer[0].1);
    let image = inner0[0].1.clone();
    let regular = tar::EntryType::Regular;
    // Class 0 gains odd members; class 1 is damaged; an empty class tar is added.
    let odd = tar_bytes(|b| {
        for (name, bytes) in &inner0 {
            raw_member(b, name, regular, bytes);
        }
        raw_member(b, "notes.txt", regular, b"not an image");
        raw_member(b, "sub/", tar::EntryType::Directory, b"");
        raw_member(b, "sub/deeper.JPEG", regular, &image);
        raw_member(b, "link.JPEG", tar::EntryType::Symlink, b"");
        raw_member(b, "../escape.JPEG", regular, &image);
        raw_member(b, "pipe.JPEG", tar::EntryType::Fifo, b"");
        raw_member(b, ".hidden.JPEG", regular, &image);
    });
    // Class 1's tar: its first member, then a header block of garbage (a checksum
    // mismatch), then a proper end-of-archive block.
    let damaged = {
        let first = members_of(&outer[1].1)[0].1.len();
        let mut d = outer[1].1[..512 + first.div_ceil(512) * 512].to_vec();
        d.extend_from_slice(&[0x55; 512]);
        d.extend_from_slice(&[0; 1024]);
        d
    };
    let archive = t.path().join("odd.tar");
    let bytes = tar_bytes(|b| {
        raw_member(b, "n90000000.tar", regular, &odd);
        raw_member(b, "n90000001.tar", regular, &damaged);
        raw_member(b, &outer[2].0, regular, &outer[2].1);
        raw_member(b, "n90000009.tar", regular, &tar_bytes(|_| {}));
        raw_member(b, "README.txt", regular, b"hello");
    });
    std::fs::write(&archive, &bytes).unwrap();
    let out = t.path().join("odd");
    let summary = build(&archive, &out, &["--max-reject-fraction", "1"]);
    let rejects: BTreeMap<String, String> = std::fs::read_to_string(out.join("rejects.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap().into(),
                v["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    let has = |path: &str, why: &str| {
        assert!(
            rejects.get(path).is_some_and(|r| r.contains(why)),
            "{path}: want {why:?}; rejects {rejects:#?}"
        )
    };
    has("n90000000/notes.txt", "");
    has("n90000000/link.JPEG", "symbolic link");
    has("n90000000/../escape.JPEG", "inside the archive");
    has("n90000000/pipe.JPEG", "FIFO");
    has("n90000001.tar", "not a valid tar archive");
    has("n90000009.tar", "empty");
    // Class 0's three images and its nested one, class 2's three; the empty and the
    // damaged class tars keep their classes (labels do not shift).
    assert!(summary.contains("7 records"), "{summary}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["classes"].as_array().unwrap().len(), 4);
    assert!(summary.contains("ignored"), "{summary}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("build.json")).unwrap()).unwrap();
    let ignored: Vec<&str> = record["ignored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        ignored,
        ["README.txt", "n90000000/.hidden.JPEG", "n90000000/sub"],
        "{record}"
    );

    // A truncated outer tar is an error naming the archive and the last member read;
    // what an earlier build wrote in the output folder stays as it was.
    let before = dataset(&out);
    for cut in [bytes.len() / 2, bytes.len() - 1024] {
        let cut_tar = t.path().join(format!("cut-{cut}.tar"));
        std::fs::write(&cut_tar, &bytes[..cut]).unwrap();
        let err = build_fails(&cut_tar, &out, &[]);
        assert!(
            err.contains(&format!("cut-{cut}.tar")) && err.contains("truncated"),
            "{err}"
        );
        assert!(err.contains("member"), "{err}");
        assert_eq!(dataset(&out), before);
    }
}

fn members_of(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut b).unwrap();
            (name, b)
        })
        .collect()
}

#[test]
fn a_bad_devkit_or_ground_truth_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 2, 2, 3);
    let val = root.join(VAL_TAR);
    let out = t.path().join("val");
    let kit = |files: &[(&str, &[u8])]| {
        let p = t.path().join(format!(
            "kit-{}.tar.gz",
            files.len() + files.iter().map(|f| f.1.len()).sum::<usize>()
        ));
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&p).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        p
    };
    let real = members_of(&{
        let mut v = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(root.join(DEVKIT)).unwrap()),
            &mut v,
        )
        .unwrap();
        v
    });
    let meta = real
        .iter()
        .find(|m| m.0.ends_with("meta.mat"))
        .unwrap()
        .1
        .clone();
    let truth = String::from_utf8(
        real.iter()
            .find(|m| m.0.ends_with(".txt"))
            .unwrap()
            .1
            .clone(),
    )
    .unwrap();
    let gt = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt";
    let mm = "ILSVRC2012_devkit_t12/data/meta.mat";
    let short: String = truth.lines().take(5).map(|l| format!("{l}\n")).collect();
    let unknown = truth.replacen(truth.lines().next().unwrap(), "99", 1);
    let cases: Vec<(PathBuf, &str)> = vec![
        (kit(&[(gt, truth.as_bytes())]), "no data/meta.mat"),
        (
            kit(&[(mm, &meta), (gt, short.as_bytes())]),
            "ILSVRC2012_val_00000006.JPEG has no line",
        ),
        (
            kit(&[(mm, &meta), (gt, unknown.as_bytes())]),
            "line 1: ID 99 is not one of",
        ),
        (
            kit(&[(mm, &meta[..200]), (gt, truth.as_bytes())]),
            "meta.mat",
        ),
    ];
    for (devkit, want) in cases {
        let err = build_fails(&val, &out, &["--split", "val", "--devkit", s(&devkit)]);
        assert!(err.contains(want), "want {want:?} in {err}");
        assert!(err.contains("kit-"), "the devkit is named: {err}");
        assert!(!out.join("manifest.json").exists());
    }
}

/// (label, payload) of every record, in order.
fn records(dir: &Path) -> Vec<(u32, Vec<u8>)> {
    let ds = sv_shard::Dataset::open(dir).unwrap();
    (0..ds.len())
        .map(|i| {
            let r = ds.record(i).unwrap();
            (r.label, r.payload.to_vec())
        })
        .collect()
}

#[test]
fn parts_of_a_tar_build_merge_into_the_single_build() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 3, 5, 0);
    let archive = root.join(TRAIN_TAR);
    let common = ["--codec", "jpeg", "--workers", "2"];
    let whole = t.path().join("whole");
    build(&archive, &whole, &common);
    let mut parts = Vec::new();
    for k in 0..3 {
        let p = t.path().join(format!("part-{k}"));
        let spec = format!("{k}/3");
        let mut args = common.to_vec();
        args.extend_from_slice(&["--part", &spec]);
        build(&archive, &p, &args);
        parts.push(p);
    }
    let merged = t.path().join("merged");
    let out = ok(&[
        "shard",
        "merge",
        s(&parts[2]),
        s(&parts[0]),
        s(&parts[1]),
        "--output",
        s(&merged),
    ]);
    assert!(
        out.contains("15 records") && out.contains("0 copied"),
        "{out}"
    );
    assert_eq!(records(&merged), records(&whole));
    ok(&["shard", "verify", s(&merged)]);
    let err = fails(&[
        "shard",
        "merge",
        s(&parts[0]),
        s(&parts[2]),
        "--output",
        s(&t.path().join("m")),
    ]);
    assert!(err.contains("part 1/3 is missing"), "{err}");
    let err = fails(&[
        "shard",
        "build",
        "--input",
        s(&archive),
        "--output",
        s(&t.path().join("x")),
        "--part",
        "3/3",
    ]);
    assert!(err.contains("0 to N-1"), "{err}");
}

/// Issue 26, item 20: a compressed archive is named as such, with no raw bytes in the
/// message; item 18: a devkit without the ground truth says which file it lacks and
/// never takes labels from a file beside the input.
#[test]
fn a_gzipped_tar_and_a_devkit_without_ground_truth_are_named() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 2, 2, 3);
    let gz = t.path().join("train.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::copy(
        &mut std::fs::File::open(root.join(TRAIN_TAR)).unwrap(),
        &mut enc,
    )
    .unwrap();
    enc.finish().unwrap();
    let err = build_fails(&gz, &t.path().join("o1"), &[]);
    assert!(err.contains("looks like a gzip file"), "{err}");
    assert!(
        !err.contains('\u{fffd}') && !err.contains("<binary>"),
        "{err}"
    );
    // a devkit of meta.mat alone, with Kaggle's csv beside the val folder
    let real = {
        let mut v = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(root.join(DEVKIT)).unwrap()),
            &mut v,
        )
        .unwrap();
        members_of(&v)
    };
    let meta = t.path().join("meta.mat");
    std::fs::write(
        &meta,
        &real.iter().find(|m| m.0.ends_with("meta.mat")).unwrap().1,
    )
    .unwrap();
    assert!(root.join("LOC_val_solution.csv").exists());
    let out = t.path().join("o2");
    let err = build_fails(
        &root.join("val"),
        &out,
        &["--split", "val", "--devkit", s(&meta)],
    );
    assert!(
        err.contains("ILSVRC2012_validation_ground_truth.txt") && err.contains("meta.mat"),
        "{err}"
    );
    assert!(!out.join("manifest.json").exists());
}

/// Issue 26, item 17: `shard merge` run again says the output is up to date.
#[test]
fn a_merge_run_again_is_up_to_date() {
    let t = tempfile::tempdir().unwrap();
    let root = synth(t.path(), 2, 3, 2);
    let parts: Vec<PathBuf> = (0..2).map(|k| t.path().join(format!("p{k}"))).collect();
    for (k, p) in parts.iter().enumerate() {
        build(&root.join("train"), p, &["--part", &format!("{k}/2")]);
    }
    let out = t.path().join("merged");
    let merge = || {
        ok(&[
            "shard",
            "merge",
            s(&parts[0]),
            s(&parts[1]),
            "--output",
            s(&out),
        ])
    };
    assert!(merge().contains("merged 2 parts"));
    let again = merge();
    assert!(again.contains("is up to date"), "{again}");
}
