//! sv-shard's integration tests: round trips, damage, rotation, determinism.

use std::path::Path;

use proptest::prelude::*;
use sv_core::{ClassInfo, Split};
use sv_shard::verify::verify_dataset;
use sv_shard::{Codec, Dataset, DatasetWriter, MANIFEST_FILE, ShardError, WriterConfig};

fn classes(n: usize) -> Vec<ClassInfo> {
    (0..n)
        .map(|i| ClassInfo {
            wnid: format!("n{i:08}"),
            name: format!("class {i}"),
        })
        .collect()
}

fn config(codec: Codec, side: u32, max_shard_bytes: u64) -> WriterConfig {
    WriterConfig {
        split: Split::Train,
        side,
        codec,
        jpeg_quality: 95,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes: classes(5),
        max_shard_bytes,
    }
}

/// A smooth, deterministic image (JPEG-friendly) varying with `seed`.
fn image(side: u32, seed: u32) -> Vec<u8> {
    let s = side as usize;
    let mut v = Vec::with_capacity(s * s * 3);
    for y in 0..s {
        for x in 0..s {
            let t = seed as usize;
            v.push(((x * 255) / s.max(1)) as u8 ^ (t as u8 & 0x40));
            v.push(((y * 255) / s.max(1)) as u8);
            v.push(((x + y + t * 37) % 256) as u8 / 2 + 64);
        }
    }
    v
}

fn write(dir: &Path, cfg: WriterConfig, images: &[(u32, Vec<u8>)]) -> sv_shard::Manifest {
    let mut w = DatasetWriter::create(dir, cfg).unwrap();
    for (label, px) in images {
        w.push(*label, px).unwrap();
    }
    w.finish().unwrap()
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .sum::<f64>()
        / a.len() as f64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn round_trip_both_codecs(
        jpeg in any::<bool>(),
        side in 8u32..40,
        labels in prop::collection::vec(0u32..5, 0..30),
        shard_records in 1u64..8,
        noise in any::<u64>(),
    ) {
        let codec = if jpeg { Codec::Jpeg } else { Codec::Raw };
        let stride = u64::from(side * side * 3);
        // Bound shards by bytes so rotation happens after about `shard_records` records.
        // A JPEG of a tiny image is larger than its raw pixels (about 600 bytes of
        // headers and tables), and no shard may pass the bound even for its first
        // record, so JPEG records get room for their headers.
        let per_record = if jpeg { stride + 2048 } else { stride } + 24;
        let max = 4096 + shard_records * per_record;
        let dir = tempfile::tempdir().unwrap();
        let images: Vec<(u32, Vec<u8>)> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let mut px = image(side, i as u32);
                if !jpeg {
                    // Raw must keep arbitrary bytes exactly.
                    let mut s = noise ^ i as u64;
                    for p in px.iter_mut().step_by(7) {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        *p = (s >> 56) as u8;
                    }
                }
                (l, px)
            })
            .collect();
        let manifest = write(dir.path(), config(codec, side, max), &images);
        prop_assert_eq!(manifest.records as usize, images.len());
        let ds = Dataset::open(dir.path()).unwrap();
        prop_assert_eq!(ds.len(), images.len());
        if codec == Codec::Raw {
            for s in &manifest.shards {
                prop_assert!(s.records <= shard_records);
            }
        }
        // No shard passes the size bound, whatever the codec.
        for s in &manifest.shards {
            let len = std::fs::metadata(dir.path().join(&s.name)).unwrap().len();
            prop_assert_eq!(len, s.bytes);
            prop_assert!(len <= max, "shard {} is {} bytes, bound {}", s.name, len, max);
        }
        let mut scratch = Vec::new();
        let mut out = vec![0u8; (side * side * 3) as usize];
        for (i, (label, px)) in images.iter().enumerate() {
            let rec = ds.record(i).unwrap();
            prop_assert_eq!(rec.label, *label);
            prop_assert_eq!(ds.label(i).unwrap(), *label);
            rec.verify().unwrap();
            let got = rec.pixels(&mut scratch).unwrap().to_vec();
            rec.decode_into(&mut out).unwrap();
            prop_assert_eq!(&got, &out);
            match codec {
                Codec::Raw => prop_assert_eq!(&got, px),
                // Quality 95 on a smooth image: close, not equal.
                Codec::Jpeg => prop_assert!(mean_abs_diff(&got, px) < 4.0,
                    "jpeg mean abs diff {}", mean_abs_diff(&got, px)),
            }
        }
        // Global indices are consistent with the shard ranges.
        let mut n = 0;
        for s in 0..ds.shard_count() {
            let r = ds.shard_range(s);
            prop_assert_eq!(r.start, n);
            n = r.end;
        }
        prop_assert_eq!(n, ds.len());
        let past_end = matches!(ds.record(ds.len()), Err(ShardError::OutOfRange { .. }));
        prop_assert!(past_end);
        let intact = verify_dataset(dir.path(), 2, &|_| {}).unwrap().ok();
        prop_assert!(intact);
    }
}

fn small_dataset(codec: Codec) -> (tempfile::TempDir, sv_shard::Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let images: Vec<(u32, Vec<u8>)> = (0..10).map(|i| (i % 5, image(16, i))).collect();
    let stride = 16 * 16 * 3;
    let m = write(
        dir.path(),
        config(codec, 16, 4096 + 4 * (stride + 24)),
        &images,
    );
    (dir, m)
}

fn shard_path(dir: &Path, m: &sv_shard::Manifest, i: usize) -> std::path::PathBuf {
    dir.join(&m.shards[i].name)
}

fn flip_byte(path: &Path, at: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[at as usize] ^= 0x20;
    std::fs::write(path, b).unwrap();
}

#[test]
fn raw_shards_are_a_plain_array_after_the_header() {
    let (dir, m) = small_dataset(Codec::Raw);
    assert_eq!(m.shards.len(), 3, "10 records, 4 per shard");
    let bytes = std::fs::read(shard_path(dir.path(), &m, 1)).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    let stride = 16 * 16 * 3;
    for local in 0..4 {
        let rec = ds.record(4 + local).unwrap();
        let at = 4096 + local * stride;
        assert_eq!(&bytes[at..at + stride], rec.payload);
    }
}

#[test]
fn flipped_payload_byte_names_shard_and_record() {
    let (dir, m) = small_dataset(Codec::Raw);
    let path = shard_path(dir.path(), &m, 1);
    // Record 2 of shard 1 (dataset index 6).
    flip_byte(&path, 4096 + 2 * 768 + 100);
    let ds = Dataset::open(dir.path()).unwrap();
    let err = ds.record(6).unwrap().verify().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("train-00001.svs") && msg.contains("record 2"),
        "{msg}"
    );
    assert!(
        msg.contains("dataset index 6") && msg.contains("checksum"),
        "{msg}"
    );
    ds.record(5).unwrap().verify().unwrap();
    let report = verify_dataset(dir.path(), 1, &|_| {}).unwrap();
    assert!(!report.ok());
    let recs: Vec<_> = report.problems.iter().filter_map(|p| p.record).collect();
    assert_eq!(recs, vec![2]);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.what.contains("file checksum"))
    );
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.path.ends_with("train-00001.svs"))
    );
}

#[test]
fn flipped_jpeg_byte_is_found_by_verify() {
    let (dir, m) = small_dataset(Codec::Jpeg);
    let path = shard_path(dir.path(), &m, 0);
    flip_byte(&path, 4096 + 300);
    let report = verify_dataset(dir.path(), 2, &|_| {}).unwrap();
    assert!(
        report.problems.iter().any(|p| p.record == Some(0)),
        "{:?}",
        report.problems
    );
}

#[test]
fn flipped_header_or_index_byte_fails_open() {
    let (dir, m) = small_dataset(Codec::Raw);
    let path = shard_path(dir.path(), &m, 0);
    flip_byte(&path, 25);
    let msg = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("train-00000.svs") && msg.contains("header checksum"),
        "{msg}"
    );

    let (dir, m) = small_dataset(Codec::Raw);
    let path = shard_path(dir.path(), &m, 2);
    let len = std::fs::metadata(&path).unwrap().len();
    flip_byte(&path, len - 10);
    let msg = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("train-00002.svs") && msg.contains("index checksum"),
        "{msg}"
    );
}

#[test]
fn truncated_shard_is_an_error_not_sigbus() {
    for codec in [Codec::Raw, Codec::Jpeg] {
        let (dir, m) = small_dataset(codec);
        let path = shard_path(dir.path(), &m, 1);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(m.shards[1].bytes / 2).unwrap();
        let msg = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("train-00001.svs") && msg.contains("truncated"),
            "{msg}"
        );
        let report = verify_dataset(dir.path(), 2, &|_| {}).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        // Truncated to less than a header, too.
        f.set_len(10).unwrap();
        assert!(Dataset::open(dir.path()).is_err());
    }
}

#[test]
fn missing_shard_is_named() {
    let (dir, m) = small_dataset(Codec::Raw);
    std::fs::remove_file(shard_path(dir.path(), &m, 2)).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(matches!(err, ShardError::MissingShard { .. }));
    assert!(err.to_string().contains("train-00002.svs"), "{err}");
    let report = verify_dataset(dir.path(), 1, &|_| {}).unwrap();
    assert!(
        report.problems[0].what.contains("missing"),
        "{:?}",
        report.problems
    );
}

/// Edit the manifest's JSON; with `reseal`, recompute its checksum afterwards (as a
/// tool that knows the format would), so the reader's own checks are exercised.
fn edit_manifest(dir: &Path, reseal: bool, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    let text = match serde_json::from_value::<sv_shard::Manifest>(v.clone()) {
        Ok(mut m) if reseal => {
            m.seal();
            serde_json::to_vec(&m).unwrap()
        }
        _ => serde_json::to_vec(&v).unwrap(),
    };
    std::fs::write(&path, text).unwrap();
}

#[test]
fn a_manifest_that_lies_is_caught() {
    type Lie = fn(&mut serde_json::Value);
    let lies: &[(&str, Lie)] = &[
        ("records is", |v| v["records"] = 11.into()),
        ("holds 4 records but the manifest says 5", |v| {
            v["shards"][0]["records"] = 5.into();
            v["records"] = 11.into();
        }),
        ("bytes but the manifest says", |v| {
            v["shards"][0]["bytes"] = 12345.into()
        }),
        ("codec is raw but the manifest says jpeg", |v| {
            v["codec"] = "jpeg".into()
        }),
        ("side is 16 but the manifest says 32", |v| {
            v["side"] = 32.into()
        }),
        ("label 4 is out of range", |v| {
            v["classes"].as_array_mut().unwrap().truncate(4);
        }),
        ("format version 2", |v| v["version"] = 2.into()),
        ("not a plain file name", |v| {
            v["shards"][0]["name"] = "../x.svs".into()
        }),
        ("wnid \"../../etc/x\", which is not a plain name", |v| {
            v["classes"][2]["wnid"] = "../../etc/x".into()
        }),
        ("class 0 has wnid \"\"", |v| {
            v["classes"][0]["wnid"] = "".into()
        }),
        (
            "wnid n00000001 is listed twice in the class list (labels 1 and 3)",
            |v| v["classes"][3]["wnid"] = "n00000001".into(),
        ),
        ("the shards' record counts add up past 2^64", |v| {
            v["shards"][0]["records"] = u64::MAX.into();
        }),
        ("missing field", |v| {
            v.as_object_mut().unwrap().remove("shards");
        }),
    ];
    for (want, lie) in lies {
        // Resealed: the consistency checks behind the checksum catch it.
        let (dir, _) = small_dataset(Codec::Raw);
        edit_manifest(dir.path(), true, lie);
        let msg = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(msg.contains(want), "expected {want:?} in {msg:?}");
        // As edited by hand: the checksum catches it first (or the parser does).
        let (dir, _) = small_dataset(Codec::Raw);
        edit_manifest(dir.path(), false, lie);
        let msg = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("checksum mismatch") || msg.contains("missing field"),
            "{msg}"
        );
        let err = verify_dataset(dir.path(), 1, &|_| {})
            .unwrap_err()
            .to_string();
        assert_eq!(err, msg);
    }
    // Swapped classes are only visible to the checksum: labels stay in range.
    let (dir, _) = small_dataset(Codec::Raw);
    edit_manifest(dir.path(), false, |v| {
        v["classes"].as_array_mut().unwrap().swap(1, 3)
    });
    let msg = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("manifest.json") && msg.contains("checksum mismatch"),
        "{msg}"
    );
    // A lying crc32 that is resealed is only visible to a full check.
    let (dir, _) = small_dataset(Codec::Raw);
    edit_manifest(dir.path(), true, |v| {
        v["shards"][1]["crc32"] = "00000000".into()
    });
    Dataset::open(dir.path()).unwrap();
    let report = verify_dataset(dir.path(), 2, &|_| {}).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert!(report.problems[0].what.contains("file checksum mismatch"));
}

#[test]
fn not_a_dataset_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let msg = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("no manifest.json"), "{msg}");
    std::fs::write(dir.path().join(MANIFEST_FILE), b"{not json").unwrap();
    let msg = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("invalid manifest"), "{msg}");
}

#[test]
fn output_is_byte_identical_for_equal_input() {
    for codec in [Codec::Raw, Codec::Jpeg] {
        let a = small_dataset(codec);
        let b = small_dataset(codec);
        assert_eq!(a.1, b.1);
        for s in &a.1.shards {
            let x = std::fs::read(a.0.path().join(&s.name)).unwrap();
            let y = std::fs::read(b.0.path().join(&s.name)).unwrap();
            assert!(x == y, "{} differs", s.name);
            assert_eq!(format!("{:08x}", crc32fast::hash(&x)), s.crc32);
            assert_eq!(x.len() as u64, s.bytes);
        }
        let no_tmp = std::fs::read_dir(a.0.path())
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp"));
        assert!(no_tmp);
    }
}

#[test]
fn writer_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(dir.path(), config(Codec::Raw, 8, 1 << 20)).unwrap();
    assert!(
        w.push(0, &[0u8; 10])
            .unwrap_err()
            .to_string()
            .contains("expected 192")
    );
    assert!(
        w.push(5, &[0u8; 192])
            .unwrap_err()
            .to_string()
            .contains("label 5")
    );
    let empty = WriterConfig {
        classes: vec![],
        ..config(Codec::Raw, 8, 1 << 20)
    };
    assert!(DatasetWriter::create(dir.path(), empty).is_err());
}

#[test]
fn released_pages_read_back_the_same_bytes() {
    for codec in [Codec::Raw, Codec::Jpeg] {
        let (dir, _m) = small_dataset(codec);
        let ds = Dataset::open(dir.path()).unwrap();
        let mut scratch = Vec::new();
        for i in 0..ds.len() {
            let rec = ds.record(i).unwrap();
            let before = rec.payload.to_vec();
            let pixels = rec.pixels(&mut scratch).unwrap().to_vec();
            rec.release_pages().unwrap();
            // the neighbours on the same pages are dropped too and still read back
            assert_eq!(rec.payload, &before[..], "{codec:?} record {i}");
            rec.verify().unwrap();
            assert_eq!(rec.pixels(&mut scratch).unwrap(), &pixels[..]);
        }
        assert!(verify_dataset(dir.path(), 1, &|_| {}).unwrap().ok());
    }
}

#[test]
fn special_files_in_place_of_a_shard_or_manifest_are_named_not_waited_on() {
    let (dir, m) = small_dataset(Codec::Raw);
    let shard = shard_path(dir.path(), &m, 1);
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            ShardError::NotAFile {
                kind: "a directory",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("truncated"), "{err}");
    let report = verify_dataset(dir.path(), 2, &|_| {}).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(
        report.problems[0].to_string(),
        format!("{}: it is a directory, not a regular file", shard.display())
    );
    #[cfg(unix)]
    {
        // A FIFO: a plain open would wait for a writer forever.
        std::fs::remove_dir(&shard).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(&shard)
            .status()
            .unwrap();
        assert!(status.success());
        let err = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("is a FIFO (named pipe), not a regular file"),
            "{err}"
        );
        let manifest = dir.path().join(MANIFEST_FILE);
        std::fs::remove_file(&manifest).unwrap();
        std::os::unix::fs::symlink(&shard, &manifest).unwrap();
        let err = verify_dataset(dir.path(), 1, &|_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("manifest.json is a FIFO"), "{err}");
    }
}

/// Every name in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn an_unfinished_writer_leaves_finished_shards_and_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let stride = 16 * 16 * 3;
    let mut w = DatasetWriter::create(dir.path(), config(Codec::Raw, 16, 4096 + 4 * (stride + 24)))
        .unwrap();
    for i in 0..6 {
        w.push(0, &image(16, i)).unwrap();
    }
    // A shard is half written under a temporary name...
    assert_eq!(names(dir.path()).len(), 2, "{:?}", names(dir.path()));
    assert!(names(dir.path())[0].ends_with(".tmp"));
    // ...and the build stops (an error elsewhere, a panic): it is removed.
    drop(w);
    assert_eq!(names(dir.path()), ["train-00000.svs"]);
    // The manifest replaces an old one whole.
    let (dir, m) = small_dataset(Codec::Raw);
    sv_shard::write_manifest(dir.path(), &m).unwrap();
    let again = sv_shard::Manifest::load(dir.path()).unwrap();
    assert_eq!(again, m);
    assert!(!names(dir.path()).iter().any(|n| n.ends_with(".tmp")));
}

/// Run as a child process by the test below: map a dataset, truncate a shard under
/// it, read a record past the new end.
#[cfg(target_os = "linux")]
fn sigbus_child(dir: &Path) -> ! {
    sv_shard::report_truncated_shards();
    let ds = Dataset::open(dir).unwrap();
    let path = dir.join(&ds.manifest().shards[0].name);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(4096).unwrap();
    let rec = ds.record(3).unwrap();
    let sum: u64 = rec.payload.iter().map(|&b| u64::from(b)).sum();
    panic!("read {sum} from a truncated map without SIGBUS");
}

#[cfg(target_os = "linux")]
#[test]
fn a_shard_truncated_under_a_reader_is_reported_by_name() {
    if let Some(dir) = std::env::var_os("SV_SIGBUS_CHILD") {
        sigbus_child(Path::new(&dir));
    }
    let (dir, m) = small_dataset(Codec::Raw);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_shard_truncated_under_a_reader_is_reported_by_name",
            "--exact",
            "--nocapture",
        ])
        .env("SV_SIGBUS_CHILD", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!(
        "error: {}: the shard file shrank while it was being read",
        shard_path(dir.path(), &m, 0).display()
    );
    assert!(err.contains(&want), "{err}");
}

#[test]
fn jpeg_subsampling_is_applied_and_recorded() {
    use sv_shard::Subsampling;
    for (sub, sampling, name) in [
        (Subsampling::S420, 0x22, "4:2:0"),
        (Subsampling::S444, 0x11, "4:4:4"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WriterConfig {
            jpeg_subsampling: sub,
            ..config(Codec::Jpeg, 32, 1 << 20)
        };
        let m = write(dir.path(), cfg, &[(0, image(32, 1)), (1, image(32, 2))]);
        assert_eq!(m.jpeg_subsampling, Some(sub));
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(
            text.contains(&format!("\"jpeg_subsampling\":\"{name}\""))
                || text.contains(&format!("\"jpeg_subsampling\": \"{name}\"")),
            "{text}"
        );
        // The luma component's sampling factors in the frame header.
        let ds = Dataset::open(dir.path()).unwrap();
        let payload = ds.record(0).unwrap().payload.to_vec();
        let sof = payload.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        assert_eq!(payload[sof + 11], sampling, "{name}");
        let mut scratch = Vec::new();
        let got = ds.record(0).unwrap().pixels(&mut scratch).unwrap().to_vec();
        assert!(mean_abs_diff(&got, &image(32, 1)) < 4.0, "{name}");
        // A manifest from before the field: still opens (its records are 4:4:4).
        edit_manifest(dir.path(), true, |v| {
            v.as_object_mut().unwrap().remove("jpeg_subsampling");
        });
        let old = Dataset::open(dir.path()).unwrap();
        assert_eq!(old.manifest().jpeg_subsampling, None);
        assert_eq!(old.len(), 2);
    }
    // Raw datasets do not mention it.
    let dir = tempfile::tempdir().unwrap();
    let m = write(
        dir.path(),
        config(Codec::Raw, 8, 1 << 20),
        &[(0, image(8, 1))],
    );
    assert_eq!(m.jpeg_subsampling, None);
    let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
    assert!(!text.contains("jpeg_subsampling"), "{text}");
}
