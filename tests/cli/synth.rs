//! `supervision synth` end to end: layout, labels, quirks, determinism, and the
//! non-empty output guard.

use std::collections::BTreeMap;
use std::path::Path;

use sv_tests::{fails, ok, s};

/// Small images keep the test quick; the layout does not depend on size.
fn synth(out: &Path, seed: &str, threads: &str) -> String {
    ok(&[
        "synth",
        "--output",
        s(out),
        "--classes",
        "4",
        "--per-class",
        "6",
        "--val-per-class",
        "3",
        "--seed",
        seed,
        "--min-side",
        "48",
        "--max-side",
        "160",
        "--threads",
        threads,
    ])
}

/// Every file under `dir`, relative path -> bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn layout_labels_and_quirks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("data");
    let summary = synth(&out, "1", "0");
    assert!(summary.contains("24 train + 12 val images"), "{summary}");

    let mapping = std::fs::read_to_string(out.join("LOC_synset_mapping.txt")).expect("mapping");
    let wnids: Vec<&str> = mapping
        .lines()
        .map(|l| l.split_once(' ').expect("wnid name").0)
        .collect();
    assert_eq!(wnids.len(), 4);
    let mut sorted = wnids.clone();
    sorted.sort();
    assert_eq!(wnids, sorted, "class order is sorted wnid order");

    let files = tree(&out);
    let (mut gray, mut cmyk, mut png) = (0, 0, 0);
    for (rel, bytes) in &files {
        if !rel.ends_with(".JPEG") {
            continue;
        }
        if bytes.starts_with(b"\x89PNG") {
            png += 1;
            assert!(rel.starts_with("train/"), "{rel}");
            continue;
        }
        assert!(
            bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
            "{rel} is neither JPEG nor PNG"
        );
        // Number of components in the SOF0 frame header: 1 gray, 3 colour, 4 CMYK.
        let sof = bytes
            .windows(2)
            .position(|m| m == [0xFF, 0xC0])
            .expect("SOF0");
        match bytes[sof + 9] {
            1 => gray += 1,
            4 => cmyk += 1,
            3 => {}
            n => panic!("{rel}: {n} components"),
        }
    }
    assert_eq!(png, 1, "exactly one PNG named .JPEG");
    assert!(
        gray >= 2 && cmyk >= 2,
        "gray {gray} cmyk {cmyk}: some in each split"
    );

    for wnid in &wnids {
        for i in 1..=6 {
            let rel = format!("train/{wnid}/{wnid}_{i}.JPEG");
            assert!(files.contains_key(&rel), "missing {rel}");
        }
    }

    // The val labels: header, one row per val image, wnid first then a box that
    // lies inside the image.
    let csv = std::fs::read_to_string(out.join("LOC_val_solution.csv")).expect("csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("ImageId,PredictionString"));
    let mut per_class = BTreeMap::new();
    let mut n = 0;
    for line in lines {
        n += 1;
        let (id, pred) = line.split_once(',').expect("two columns");
        assert_eq!(id, format!("ILSVRC2012_val_{n:08}"));
        assert!(
            files.contains_key(&format!("val/{id}.JPEG")),
            "no file for {id}"
        );
        let fields: Vec<&str> = pred.split_whitespace().collect();
        assert_eq!(fields.len(), 5, "{line}");
        assert!(wnids.contains(&fields[0]), "{line}");
        let b: Vec<u32> = fields[1..]
            .iter()
            .map(|v| v.parse().expect("box number"))
            .collect();
        assert!(
            b[0] <= b[2] && b[1] <= b[3] && b[2] < 160 && b[3] < 160,
            "{line}"
        );
        *per_class.entry(fields[0].to_string()).or_insert(0) += 1;
    }
    assert_eq!(n, 12);
    assert!(per_class.values().all(|&c| c == 3), "{per_class:?}");
}

#[test]
fn same_seed_same_bytes_whatever_the_threads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    synth(&a, "7", "1");
    synth(&b, "7", "3");
    synth(&c, "8", "0");
    let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
    assert_eq!(ta.len(), 24 + 12 + 2);
    assert!(ta == tb, "seed 7 differs between 1 and 3 threads");
    assert!(ta != tc, "seeds 7 and 8 gave the same files");
}

#[test]
fn refuses_a_non_empty_output_unless_forced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("d");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join("keep.txt"), b"mine").expect("write");
    let err = fails(&[
        "synth",
        "--output",
        s(&out),
        "--classes",
        "2",
        "--per-class",
        "2",
    ]);
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    std::fs::create_dir_all(out.join("train/n_stale")).expect("mkdir");
    ok(&[
        "synth",
        "--output",
        s(&out),
        "--classes",
        "2",
        "--per-class",
        "2",
        "--val-per-class",
        "1",
        "--max-side",
        "200",
        "--force",
    ]);
    assert!(
        !out.join("train/n_stale").exists(),
        "stale class folder removed"
    );
    assert_eq!(std::fs::read(out.join("keep.txt")).expect("kept"), b"mine");

    let err = fails(&[
        "synth",
        "--output",
        s(&tmp.path().join("e")),
        "--classes",
        "0",
    ]);
    assert!(err.contains("'0' for '--classes"), "{err}");
}

#[test]
fn counts_out_of_range_are_refused_naming_the_flag_and_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("z");
    // Each of the large ones planned every image in memory before writing one
    // (u32::MAX per class is 17 billion), or started a thread per image (issue 26,
    // item 3).
    for (flag, value, want) in [
        ("--per-class", "0", "must be at least 1"),
        ("--classes", "0", "must be at least 1"),
        ("--classes", "10001", "must be at most 10000"),
        ("--per-class", "4294967295", "must be at most 5000000"),
        ("--val-per-class", "5000001", "must be at most 5000000"),
        ("--threads", "18446744073709551615", "must be at most 1024"),
        ("--classes", "1e7", "not a whole number"),
    ] {
        let err = fails(&["synth", "--output", s(&out), flag, value]);
        assert!(
            err.contains(&format!("'{value}' for '{flag}")) && err.contains(want),
            "{flag} {value}: {err}"
        );
        assert!(!out.exists(), "nothing is written for a refused command");
    }
    // Each flag in range, their product not: refused before --force deletes anything.
    std::fs::create_dir_all(out.join("train")).unwrap();
    std::fs::write(out.join("train/old.JPEG"), b"old").unwrap();
    let err = fails(&[
        "synth",
        "--output",
        s(&out),
        "--classes",
        "10000",
        "--per-class",
        "501",
        "--force",
    ]);
    assert!(
        err.contains("5010000 images") && err.contains("--per-class"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("train/old.JPEG")).unwrap(), b"old");
}
