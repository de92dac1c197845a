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
        // These tests put bad files among few images; the bound has its own tests.
        max_reject_fraction: 1.0,
        force: false,
        hash_inputs: false,
        part: None,
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

// ---------------------------------------------------------------------------------
// Hardening (issue 15): locks, fingerprints, special files, input-tree surprises,
// shard size bound.

/// A copy of the `build` snapshot without the files that name this run.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot(dir)
}

fn verify_ok(dir: &Path) {
    let report = sv_shard::verify::verify_dataset(dir, 2, &|_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}

#[test]
fn a_second_build_into_the_same_folder_fails_at_once_naming_the_holder() {
    use std::sync::{Mutex, mpsc};
    use std::time::{Duration, Instant};
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 6);
    let out = t.path().join("out");
    let cfg = config(&input, &out, 1, Codec::Raw);
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            build(&cfg, &|p| {
                if let sv_build::Progress::Image { done: 1, .. } = p {
                    started_tx.send(()).unwrap();
                    go_rx.lock().unwrap().recv().unwrap();
                }
            })
        });
        started_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        // The same command (its journal is a live build's, not an interrupted one),
        // and the same with --force (which must not delete a live build's files).
        let seconds: Vec<_> = [false, true]
            .into_iter()
            .map(|force| {
                let mut second = cfg.clone();
                second.force = force;
                let t0 = Instant::now();
                let r = build(&second, &|_| {});
                (force, r, t0.elapsed())
            })
            .collect();
        go_tx.send(()).unwrap();
        for (force, r, took) in seconds {
            let err = r.unwrap_err().to_string();
            assert!(
                err.contains(&format!("pid {}", std::process::id())),
                "force={force}: {err}"
            );
            assert!(took < Duration::from_secs(10), "did not fail at once");
        }
        let s = first.join().unwrap().unwrap();
        assert_eq!(s.manifest.records, 12);
    });
    verify_ok(&out);
    // The lock is released: the same command now reports "up to date".
    assert!(build(&cfg, &|_| {}).unwrap().up_to_date);
}

/// Replace `path`'s bytes, keeping its size and modification time.
fn flip_keeping_size_and_mtime(path: &Path, at: usize) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x55;
    std::fs::write(path, &b).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(mtime).unwrap();
}

/// Give `path` other pixels (another image of the tree), and a later mtime.
fn replace_image(path: &Path, with: &Path) {
    let bytes = std::fs::read(with).unwrap();
    std::fs::write(path, bytes).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(later).unwrap();
}

#[test]
fn content_rewritten_in_place_is_caught_with_hash_inputs() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 9);
    let out = t.path().join("out");
    let hashed = |out: &Path| {
        let mut c = config(&input, out, 2, Codec::Raw);
        c.hash_inputs = true;
        c
    };
    build(&hashed(&out), &|_| {}).unwrap();
    assert!(build(&hashed(&out), &|_| {}).unwrap().up_to_date);
    // The same size and modification time, other bytes: only the content tells.
    flip_keeping_size_and_mtime(&input.join("n00000001/img_005.JPEG"), 700);
    assert!(
        build(&config(&input, &out, 2, Codec::Raw), &|_| {})
            .unwrap()
            .up_to_date,
        "without content hashes, size and time are what is compared"
    );
    let s = build(&hashed(&out), &|_| {}).unwrap();
    assert!(!s.up_to_date);
    assert!(s.resumed_shards >= 1, "earlier shards are kept");
    let fresh = t.path().join("fresh");
    build(&hashed(&fresh), &|_| {}).unwrap();
    assert_eq!(files(&out), files(&fresh));
}

#[test]
fn a_changed_input_is_rebuilt_never_reported_up_to_date() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 9);
    let out = t.path().join("out");
    build(&config(&input, &out, 2, Codec::Jpeg), &|_| {}).unwrap();
    // Same name, other content (a later mtime, maybe another size).
    replace_image(
        &input.join("n00000001/img_002.JPEG"),
        &input.join("n00000000/img_007.JPEG"),
    );
    let s = build(&config(&input, &out, 2, Codec::Jpeg), &|_| {}).unwrap();
    assert!(!s.up_to_date, "stale data reported up to date");
    let fresh = t.path().join("fresh");
    build(&config(&input, &fresh, 1, Codec::Jpeg), &|_| {}).unwrap();
    assert_eq!(files(&out), files(&fresh));
}

#[test]
fn resuming_after_an_input_changed_rebuilds_from_the_affected_shard() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 9);
    // A traced build: the journal as it stood after each shard.
    let trace = t.path().join("trace");
    let journals = std::sync::Mutex::new(Vec::new());
    build(&config(&input, &trace, 1, Codec::Raw), &|p| {
        if let sv_build::Progress::Shard { .. } = p {
            let j = std::fs::read_to_string(trace.join(JOURNAL_FILE)).unwrap_or_default();
            journals.lock().unwrap().push(j);
        }
    })
    .unwrap();
    let journals = journals.into_inner().unwrap();
    // Killed after three shards (records 0..15).
    let out = t.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for k in 0..3 {
        let name = format!("train-{k:05}.svs");
        std::fs::copy(trace.join(&name), out.join(&name)).unwrap();
    }
    std::fs::write(out.join(JOURNAL_FILE), &journals[2]).unwrap();
    // Record 6 (n00000000/img_006) lies in shard 1: shards 1 and 2 are stale now.
    replace_image(
        &input.join("n00000000/img_006.JPEG"),
        &input.join("n00000001/img_000.JPEG"),
    );
    let s = build(&config(&input, &out, 2, Codec::Raw), &|_| {}).unwrap();
    assert_eq!(s.resumed_shards, 1);
    let fresh = t.path().join("fresh");
    build(&config(&input, &fresh, 1, Codec::Raw), &|_| {}).unwrap();
    assert_eq!(files(&out), files(&fresh));
}

#[test]
fn up_to_date_checks_every_shards_header_and_index() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 9);
    let reference = t.path().join("reference");
    build(&config(&input, &reference, 2, Codec::Raw), &|_| {}).unwrap();
    let want = files(&reference);
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("header byte", |p| {
            let mut b = std::fs::read(p).unwrap();
            b[30] ^= 1;
            std::fs::write(p, b).unwrap();
        }),
        ("index byte", |p| {
            let mut b = std::fs::read(p).unwrap();
            let n = b.len();
            b[n - 10] ^= 1;
            std::fs::write(p, b).unwrap();
        }),
        ("same length, zeroed", |p| {
            let n = std::fs::metadata(p).unwrap().len();
            std::fs::write(p, vec![0u8; n as usize]).unwrap();
        }),
    ];
    for (what, damage) in damages {
        let out = t.path().join(what.replace(' ', "-"));
        build(&config(&input, &out, 2, Codec::Raw), &|_| {}).unwrap();
        damage(&out.join("train-00001.svs"));
        let s = build(&config(&input, &out, 2, Codec::Raw), &|_| {}).unwrap();
        assert!(!s.up_to_date, "{what}: damaged shards reported up to date");
        assert_eq!(files(&out), want, "{what}");
    }
    // A folder in a shard's place is not ours to delete: the build stops at once
    // naming it.
    let out = t.path().join("folder");
    build(&config(&input, &out, 2, Codec::Raw), &|_| {}).unwrap();
    let shard = out.join("train-00001.svs");
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    let err = build(&config(&input, &out, 2, Codec::Raw), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("train-00001.svs is a directory"), "{err}");
}

/// Run `f` on another thread; fail (rather than hang) after `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("the build hung")
}

#[cfg(unix)]
#[test]
fn special_files_are_rejected_never_waited_on() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 3);
    let fifo = input.join("n00000000/fifo.JPEG");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // A symlink to the FIFO, one to a character device, and a socket.
    std::os::unix::fs::symlink(&fifo, input.join("n00000001/link-to-fifo.JPEG")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", input.join("n00000001/zero.JPEG")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(input.join("n00000001/sock.JPEG")).unwrap();
    let out = t.path().join("out");
    let cfg = config(&input, &out, 2, Codec::Raw);
    let s = within(60, move || build(&cfg, &|_| {})).unwrap();
    assert_eq!(s.manifest.records, 6);
    let reasons: BTreeMap<String, String> = s
        .rejects
        .iter()
        .map(|r| (r.path.clone(), r.reason.clone()))
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons["n00000000/fifo.JPEG"].contains("FIFO"),
        "{reasons:?}"
    );
    assert!(
        reasons["n00000001/link-to-fifo.JPEG"].contains("FIFO"),
        "{reasons:?}"
    );
    assert!(
        reasons["n00000001/zero.JPEG"].contains("device"),
        "{reasons:?}"
    );
    assert!(
        reasons["n00000001/sock.JPEG"].contains("socket"),
        "{reasons:?}"
    );
}

#[cfg(unix)]
#[test]
fn every_file_in_the_input_tree_is_a_record_a_reject_or_ignored() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 3);
    let good = std::fs::read(input.join("n00000000/img_000.JPEG")).unwrap();
    // The output folder inside the input tree (already there, as on a second run).
    let out = input.join("shards");
    std::fs::create_dir_all(&out).unwrap();
    // A dangling symlink at the top of the tree.
    std::os::unix::fs::symlink(t.path().join("nowhere"), input.join("broken")).unwrap();
    // An image in a nested folder, a dotfile, a top-level file, a non-UTF-8 name.
    std::fs::create_dir_all(input.join("n00000000/more")).unwrap();
    std::fs::write(input.join("n00000000/more/nested.JPEG"), &good).unwrap();
    std::fs::write(input.join("n00000001/.DS_Store"), b"mac").unwrap();
    std::fs::write(input.join("README.txt"), b"hello").unwrap();
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.JPEG");
    std::fs::write(input.join("n00000001").join(latin1), &good).unwrap();

    let s = build(&config(&input, &out, 2, Codec::Raw), &|_| {}).unwrap();
    let classes: Vec<&str> = s.manifest.classes.iter().map(|c| c.wnid.as_str()).collect();
    assert_eq!(classes, ["n00000000", "n00000001"]);
    // 6 tree images + the nested one + the non-UTF-8 one.
    assert_eq!(s.manifest.records, 8, "rejects: {:?}", s.rejects);
    let rejects: Vec<(&str, &str)> = s
        .rejects
        .iter()
        .map(|r| (r.path.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(rejects[0].0, "broken");
    assert!(rejects[0].1.contains("broken symbolic link"), "{rejects:?}");
    let ignored: Vec<(&str, &str)> = s
        .ignored
        .iter()
        .map(|r| (r.path.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(ignored.len(), 3, "{ignored:?}");
    assert_eq!(ignored[0].0, "README.txt");
    assert!(
        ignored[0].1.contains("not inside a class folder"),
        "{ignored:?}"
    );
    assert_eq!(ignored[1].0, "n00000001/.DS_Store");
    assert!(ignored[1].1.contains("hidden"), "{ignored:?}");
    assert_eq!(ignored[2], ("shards", "the build's own output folder"));
    // The non-UTF-8 name is a record, reported (if ever) with its byte escaped.
    assert!(
        sv_build::inputs::display_path(&Path::new("n1").join(latin1)).ends_with("caf\\xe9.JPEG")
    );
    // A second run is up to date (the output folder is not read as a class).
    assert!(
        build(&config(&input, &out, 2, Codec::Raw), &|_| {})
            .unwrap()
            .up_to_date
    );
}

#[test]
fn shards_never_grow_past_the_bound() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 4);
    // Raw 600x600 records are 1,080,000 bytes: none fits in 1 MiB. Refused up front.
    let out = t.path().join("raw");
    let mut cfg = config(&input, &out, 2, Codec::Raw);
    cfg.side = 600;
    cfg.max_shard_bytes = 1 << 20;
    let err = build(&cfg, &|_| {}).unwrap_err().to_string();
    assert!(err.contains("1080000") || err.contains("1.0 MiB"), "{err}");
    assert!(!out.join("train-00000.svs").exists());

    // JPEG records vary in size: a bound between the smallest and the largest
    // rejects the records that cannot fit in any shard, and no shard passes it.
    let probe = t.path().join("probe");
    build(&config(&input, &probe, 2, Codec::Jpeg), &|_| {}).unwrap();
    let ds = Dataset::open(&probe).unwrap();
    let mut sizes: Vec<usize> = (0..ds.len())
        .map(|i| ds.record(i).unwrap().payload.len())
        .collect();
    sizes.sort();
    let mid = sizes[sizes.len() / 2];
    let bound = 4096 + 24 + mid as u64;
    let out = t.path().join("jpeg");
    let mut cfg = config(&input, &out, 2, Codec::Jpeg);
    cfg.max_shard_bytes = bound;
    let s = build(&cfg, &|_| {}).unwrap();
    let too_big = sizes.iter().filter(|&&n| n > mid).count();
    assert_eq!(s.rejects.len(), too_big, "{:?}", s.rejects);
    assert!(
        s.rejects.iter().all(|r| r.reason.contains("shard")),
        "{:?}",
        s.rejects
    );
    for sh in &s.manifest.shards {
        assert!(
            sh.bytes <= bound,
            "{} is {} bytes > {bound}",
            sh.name,
            sh.bytes
        );
    }
}

// ---------------------------------------------------------------------------------
// Archives (issue 13): ImageNet's tars read in place.

/// Append `bytes` as a regular member `name` with the given mtime.
fn append(b: &mut tar::Builder<impl std::io::Write>, name: &[u8], bytes: &[u8], mtime: u64) {
    use std::os::unix::ffi::OsStrExt;
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, std::ffi::OsStr::from_bytes(name), bytes)
        .unwrap();
}

/// The tree at `root` as ImageNet ships train: a tar of one tar per class folder.
/// `reverse` writes members in reverse order (the build must not depend on it).
fn tar_of_tars(root: &Path, out: &Path, reverse: bool) {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if reverse {
        classes.reverse();
    }
    let mut outer = tar::Builder::new(std::fs::File::create(out).unwrap());
    for class in classes {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        if reverse {
            files.reverse();
        }
        let mut inner = tar::Builder::new(Vec::new());
        for f in files {
            let mtime = std::fs::metadata(&f)
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let name = f.file_name().unwrap().as_encoded_bytes().to_vec();
            append(&mut inner, &name, &std::fs::read(&f).unwrap(), mtime);
        }
        let bytes = inner.into_inner().unwrap();
        let name = format!("{}.tar", class.file_name().unwrap().to_string_lossy());
        append(&mut outer, name.as_bytes(), &bytes, 1_300_000_000);
    }
    outer.finish().unwrap();
}

#[test]
fn a_tar_of_class_tars_builds_the_bytes_of_its_extracted_tree() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 3, 5);
    std::fs::write(input.join("n00000002/zz_bad.JPEG"), b"not an image").unwrap();
    let archive = t.path().join("train.tar");
    tar_of_tars(&input, &archive, true);
    for codec in [Codec::Raw, Codec::Jpeg] {
        let from_tree = t.path().join(format!("tree-{codec}"));
        build(&config(&input, &from_tree, 2, codec), &|_| {}).unwrap();
        for workers in [1, 3] {
            let from_tar = t.path().join(format!("tar-{codec}-{workers}"));
            let s = build(&config(&archive, &from_tar, workers, codec), &|_| {}).unwrap();
            assert_eq!(s.manifest.records, 15);
            assert_eq!(s.rejects.len(), 1, "{:?}", s.rejects);
            let (a, b) = (files(&from_tree), files(&from_tar));
            for name in ["manifest.json", "rejects.jsonl"] {
                assert_eq!(a[name], b[name], "{codec} {name}");
            }
            let shards: Vec<_> = a.keys().filter(|k| k.ends_with(".svs")).collect();
            assert_eq!(
                shards,
                b.keys().filter(|k| k.ends_with(".svs")).collect::<Vec<_>>()
            );
            for s in shards {
                assert!(a[s] == b[s], "{codec}: {s} differs between tree and tar");
            }
            // Up to date on the second run, as from a folder.
            assert!(
                build(&config(&archive, &from_tar, 2, codec), &|_| {})
                    .unwrap()
                    .up_to_date
            );
        }
    }
}

/// The MAT reader against files scipy.io.savemat wrote in the real meta.mat's layout
/// (tools/fixtures/devkit.py), plain and compressed.
#[test]
fn devkit_meta_written_by_scipy_reads_as_written() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let want: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixtures.join("meta_small.json")).unwrap()).unwrap();
    for name in ["meta_small.mat", "meta_small_compressed.mat"] {
        let bytes = std::fs::read(fixtures.join(name)).unwrap();
        let vars = sv_build::mat::read(&bytes).unwrap();
        let sv_build::mat::Value::Struct {
            dims,
            fields,
            elems,
        } = &vars[0].value
        else {
            panic!("{name}: {:?}", vars[0].value);
        };
        assert_eq!(vars[0].name, "synsets");
        assert_eq!(dims, &[6, 1], "{name}");
        assert_eq!(fields[..3], ["ILSVRC2012_ID", "WNID", "words"], "{name}");
        for (e, w) in elems.iter().zip(&want) {
            assert_eq!(e[0].scalar(), w["id"].as_f64(), "{name}");
            assert_eq!(e[1].text(), w["wnid"].as_str(), "{name}");
            assert_eq!(e[2].text(), w["words"].as_str(), "{name}");
            let children: Vec<f64> = w["children"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_f64().unwrap())
                .collect();
            assert_eq!(e[5].numbers(), Some(&children[..]), "{name}");
        }
        // Through the devkit: the leaves (num_children 0) are the classes.
        let kit = sv_build::devkit::Devkit::load(&[fixtures.join(name)])
            .unwrap()
            .unwrap();
        let names = kit.names();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(names["n02119789"], "kit fox, Vulpes macrotis");
        assert!(
            !names.contains_key("n00001740"),
            "inner nodes are not classes"
        );
    }
}

// ---------------------------------------------------------------------------------
// Split builds (issue 13): --part K/N and merge.

/// (label, payload) of every record, in order.
fn records(dir: &Path) -> Vec<(u32, Vec<u8>)> {
    let ds = Dataset::open(dir).unwrap();
    (0..ds.len())
        .map(|i| {
            let r = ds.record(i).unwrap();
            (r.label, r.payload.to_vec())
        })
        .collect()
}

fn part_config(input: &Path, out: &Path, k: usize, n: usize) -> BuildConfig {
    let mut c = config(input, out, 2, Codec::Jpeg);
    c.part = Some(sv_build::Part { index: k, count: n });
    c
}

#[test]
fn three_parts_merged_equal_one_build() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 3, 7);
    std::fs::write(input.join("n00000001/img_003b.JPEG"), b"garbage").unwrap();
    std::fs::write(input.join("README"), b"top-level file").unwrap();
    let whole = t.path().join("whole");
    build(&config(&input, &whole, 2, Codec::Jpeg), &|_| {}).unwrap();
    let parts: Vec<PathBuf> = (0..3).map(|k| t.path().join(format!("part{k}"))).collect();
    // Built in any order, each resumable and up to date on its own.
    for k in [2, 0, 1] {
        build(&part_config(&input, &parts[k], k, 3), &|_| {}).unwrap();
        assert!(
            build(&part_config(&input, &parts[k], k, 3), &|_| {})
                .unwrap()
                .up_to_date
        );
    }
    let merged = t.path().join("merged");
    let m = sv_build::merge(&sv_build::MergeConfig {
        parts: vec![parts[1].clone(), parts[2].clone(), parts[0].clone()],
        output: merged.clone(),
        force: false,
    })
    .unwrap();
    assert_eq!(m.manifest.records, 21);
    assert_eq!(m.copied, 0, "same filesystem: linked, not copied");
    assert_eq!(records(&merged), records(&whole));
    let (a, b) = (files(&whole), files(&merged));
    assert_eq!(a["rejects.jsonl"], b["rejects.jsonl"]);
    let (ma, mb) = (
        sv_shard::Manifest::load(&whole).unwrap(),
        sv_shard::Manifest::load(&merged).unwrap(),
    );
    assert_eq!(ma.classes, mb.classes);
    verify_ok(&merged);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let first = std::fs::metadata(merged.join("train-00000.svs")).unwrap();
        let src = std::fs::metadata(parts[0].join("train-00000.svs")).unwrap();
        assert_eq!(first.ino(), src.ino(), "no pixel copied");
    }

    use sv_build::PartProblem::*;
    // The condition is told by its variant; the words name the folders.
    let refuse = |given: Vec<PathBuf>, out: &str, want: sv_build::PartProblem| {
        let err = sv_build::merge(&sv_build::MergeConfig {
            parts: given,
            output: t.path().join(out),
            force: false,
        })
        .unwrap_err();
        assert!(
            matches!(err, sv_build::BuildError::Parts { problem, .. } if problem == want),
            "want {want:?}: {err}"
        );
        err.to_string()
    };
    let err = refuse(vec![parts[0].clone(), parts[2].clone()], "m1", Missing);
    assert!(err.contains("part 1/3 is missing"), "{err}");
    let err = refuse(
        vec![
            parts[0].clone(),
            parts[1].clone(),
            parts[1].clone(),
            parts[2].clone(),
        ],
        "m2",
        GivenTwice,
    );
    assert!(err.contains("part1 is given twice"), "{err}");
    let copy = t.path().join("part1-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for (name, bytes) in files(&parts[1]) {
        std::fs::write(copy.join(name), bytes).unwrap();
    }
    let err = refuse(
        vec![parts[0].clone(), parts[1].clone(), copy, parts[2].clone()],
        "m2b",
        GivenTwice,
    );
    assert!(err.contains("part 1/3 is given twice"), "{err}");
    // Other settings (JPEG quality), other inputs (one more image), another count.
    let other = t.path().join("other-quality");
    let mut c = part_config(&input, &other, 1, 3);
    c.jpeg_quality = 80;
    build(&c, &|_| {}).unwrap();
    let err = refuse(
        vec![parts[0].clone(), other.clone(), parts[2].clone()],
        "m3",
        OtherBuild,
    );
    assert!(
        err.contains("other-quality") && err.contains("other inputs or settings"),
        "{err}"
    );
    let four = t.path().join("of-four");
    build(&part_config(&input, &four, 1, 4), &|_| {}).unwrap();
    let err = refuse(
        vec![parts[0].clone(), four, parts[2].clone()],
        "m4",
        OtherBuild,
    );
    assert!(err.contains("of-four"), "{err}");
    std::fs::write(
        input.join("n00000002/img_999.JPEG"),
        std::fs::read(input.join("n00000002/img_000.JPEG")).unwrap(),
    )
    .unwrap();
    let grown = t.path().join("grown");
    build(&part_config(&input, &grown, 1, 3), &|_| {}).unwrap();
    let err = refuse(
        vec![parts[0].clone(), grown, parts[2].clone()],
        "m5",
        OtherBuild,
    );
    assert!(
        err.contains("grown") && err.contains("other inputs"),
        "{err}"
    );
    // A whole build is not a part; an unfinished part is named as such.
    let err = refuse(vec![whole.clone()], "m6", NotAPart);
    assert!(err.contains("not a part"), "{err}");
}

// ---------------------------------------------------------------------------------
// Hardening (issue 26).

/// Item 9: a class tar that appears twice in the train tar is its later copy alone,
/// as extracting the outer tar and then the class tars gives: the bytes of that tree.
#[test]
fn a_class_tar_given_twice_is_replaced_as_extraction_does() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 3, 4);
    let class_tar = |dir: &Path, names: &[&str]| {
        let mut inner = tar::Builder::new(Vec::new());
        for n in names {
            append(
                &mut inner,
                n.as_bytes(),
                &std::fs::read(dir.join(n)).unwrap(),
                1,
            );
        }
        inner.into_inner().unwrap()
    };
    let c0 = input.join("n00000000");
    let first = class_tar(&c0, &["img_000.JPEG", "img_001.JPEG", "img_002.JPEG"]);
    let second = class_tar(&c0, &["img_001.JPEG", "img_003.JPEG"]);
    let archive = t.path().join("train.tar");
    let mut outer = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    append(&mut outer, b"n00000000.tar", &first, 1);
    for c in ["n00000001", "n00000002"] {
        let names = [
            "img_000.JPEG",
            "img_001.JPEG",
            "img_002.JPEG",
            "img_003.JPEG",
        ];
        append(
            &mut outer,
            format!("{c}.tar").as_bytes(),
            &class_tar(&input.join(c), &names),
            1,
        );
    }
    append(&mut outer, b"n00000000.tar", &second, 1);
    outer.finish().unwrap();
    drop(outer);
    // the extracted tree: class 0 holds the second copy's two images
    std::fs::remove_file(c0.join("img_000.JPEG")).unwrap();
    std::fs::remove_file(c0.join("img_002.JPEG")).unwrap();
    let from_tree = t.path().join("tree");
    let from_tar = t.path().join("tar");
    build(&config(&input, &from_tree, 2, Codec::Jpeg), &|_| {}).unwrap();
    let s = build(&config(&archive, &from_tar, 2, Codec::Jpeg), &|_| {}).unwrap();
    assert_eq!(s.manifest.records, 10);
    assert!(
        s.ignored
            .iter()
            .any(|i| i.path == "n00000000.tar" && i.reason.contains("replaced")),
        "{:?}",
        s.ignored
    );
    let (a, b) = (files(&from_tree), files(&from_tar));
    for (name, bytes) in &a {
        if name.ends_with(".svs") || name == "manifest.json" || name == "rejects.jsonl" {
            assert!(
                b.get(name) == Some(bytes),
                "{name} differs between tree and tar"
            );
        }
    }
}

/// Item 12: an archive cut while the build reads it is an error naming it, not the
/// rest of its members turned into rejects and a dataset.
#[test]
fn an_archive_cut_while_it_is_read_stops_the_build() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 6);
    let archive = t.path().join("train.tar");
    tar_of_tars(&input, &archive, false);
    let len = std::fs::metadata(&archive).unwrap().len();
    let out = t.path().join("out");
    let cut = |p: sv_build::Progress| {
        if let sv_build::Progress::Start { .. } = p {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&archive)
                .unwrap();
            f.set_len(len / 2).unwrap();
        }
    };
    let err = build(&config(&archive, &out, 2, Codec::Raw), &cut).unwrap_err();
    assert!(matches!(err, sv_build::BuildError::Damaged { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("train.tar") && text.contains("cut or changed"),
        "{text}"
    );
    assert!(!out.join("manifest.json").exists());
}

/// Item 14: nothing usable is an error, not an empty dataset; so is a build whose
/// rejects pass the bound (the default: a few percent).
#[test]
fn an_empty_or_mostly_rejected_build_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 10);
    // every file bad
    let bad = t.path().join("bad");
    for c in ["n1", "n2"] {
        std::fs::create_dir_all(bad.join(c)).unwrap();
        std::fs::write(bad.join(c).join("a.JPEG"), b"not an image").unwrap();
    }
    let out = t.path().join("out-bad");
    let err = build(&config(&bad, &out, 2, Codec::Raw), &|_| {}).unwrap_err();
    assert!(matches!(err, sv_build::BuildError::Empty { .. }), "{err}");
    assert!(!out.join("manifest.json").exists());
    // no image at all: class folders that are empty, or only hidden files
    let empty = t.path().join("empty");
    std::fs::create_dir_all(empty.join("n1")).unwrap();
    std::fs::write(empty.join("n1/.hidden"), b"x").unwrap();
    let err = build(
        &config(&empty, &t.path().join("out-empty"), 1, Codec::Raw),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(err, sv_build::BuildError::Empty { .. }), "{err}");
    assert!(err.to_string().contains("no usable images"), "{err}");
    // 3 bad among 20: 13% rejected, more than the default 5%
    for i in 0..3 {
        std::fs::write(input.join(format!("n00000001/zz_{i}.JPEG")), b"junk").unwrap();
    }
    let mut c = config(&input, &t.path().join("out-some"), 2, Codec::Raw);
    c.max_reject_fraction = sv_build::DEFAULT_MAX_REJECT_FRACTION;
    let err = build(&c, &|_| {}).unwrap_err();
    let sv_build::BuildError::TooManyRejects {
        rejected,
        total,
        first,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (*rejected, *total),
        (2, 23),
        "stops at the first reject past 5% of 23"
    );
    assert_eq!(first.path, "n00000001/zz_0.JPEG");
    assert!(err.to_string().contains("5%"), "{err}");
    // allowed: the same command with a larger bound resumes and finishes
    c.max_reject_fraction = 0.2;
    let s = build(&c, &|_| {}).unwrap();
    assert_eq!((s.manifest.records, s.rejects.len()), (20, 3));
    // rejects found while listing count before anything is decoded
    let mut l = config(&input, &t.path().join("out-list"), 2, Codec::Raw);
    l.input.classes = Some(vec![sv_core::ClassInfo {
        wnid: "n00000000".into(),
        name: "zero".into(),
    }]);
    l.max_reject_fraction = 0.1;
    let err = build(&l, &|_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            sv_build::BuildError::TooManyRejects { rejected: 13, .. }
        ),
        "{err}"
    );
    assert!(!t.path().join("out-list/.build-journal.jsonl").exists());
}

/// Item 3: counts that size threads or memory are bounded in the library too.
#[test]
fn worker_count_shard_bound_and_fraction_are_bounded() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 1, 1);
    let out = t.path().join("out");
    let refused = |c: &sv_build::BuildConfig, want: &str, text: &str| {
        let err = build(c, &|_| {}).unwrap_err();
        assert!(
            matches!(&err, sv_build::BuildError::Setting { setting, .. } if *setting == want),
            "{err:?}"
        );
        assert!(err.to_string().contains(text), "{err}");
    };
    let mut c = config(&input, &out, usize::MAX, Codec::Raw);
    refused(&c, "workers", "at most 1024");
    c.workers = 1;
    c.max_shard_bytes = u64::MAX;
    refused(&c, "max_shard_bytes", "65536 MiB");
    c.max_shard_bytes = 1 << 20;
    c.max_reject_fraction = f64::NAN;
    refused(&c, "max_reject_fraction", "between 0 and 1");
    assert!(!out.join("manifest.json").exists());
}

/// The files of a dataset folder (not its folders: a staging folder is checked apart).
fn regular_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

fn merge_into(
    parts: &[PathBuf],
    out: &Path,
    force: bool,
) -> Result<sv_build::MergeSummary, sv_build::BuildError> {
    sv_build::merge(&sv_build::MergeConfig {
        parts: parts.to_vec(),
        output: out.to_path_buf(),
        force,
    })
}

/// Items 13, 15 and 17: merge checks the CRC of every shard it places; `--force`
/// keeps the old dataset until the new one is whole; a merge run again is up to date,
/// and one cut short resumes, never "other inputs".
#[test]
fn merge_verifies_resumes_and_replaces_only_once_whole() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 6);
    let parts: Vec<PathBuf> = (0..2).map(|k| t.path().join(format!("part{k}"))).collect();
    for (k, part) in parts.iter().enumerate() {
        build(&part_config(&input, part, k, 2), &|_| {}).unwrap();
    }
    let merged = t.path().join("merged");
    let first = merge_into(&parts, &merged, false).unwrap();
    assert!(!first.up_to_date);
    let before = regular_files(&merged);
    // run again: up to date, nothing written
    let again = merge_into(&parts, &merged, false).unwrap();
    assert!(again.up_to_date);
    assert_eq!(regular_files(&merged), before);

    // a flipped payload byte in part 1's shard (the size and the part's manifest
    // unchanged) is refused, naming the shard
    let shard = parts[1].join(&sv_shard::Manifest::load(&parts[1]).unwrap().shards[0].name);
    let good = std::fs::read(&shard).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    // a new inode, so the merged dataset's hard link keeps the good bytes
    std::fs::remove_file(&shard).unwrap();
    std::fs::write(&shard, &bad).unwrap();
    let fresh = t.path().join("fresh");
    let err = merge_into(&parts, &fresh, false).unwrap_err();
    assert!(
        matches!(err, sv_build::BuildError::ShardDamaged { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&shard.display().to_string()),
        "{err}"
    );
    assert!(!fresh.join("manifest.json").exists());
    // --force over a dataset: the failure leaves the old one whole
    let whole = t.path().join("whole");
    build(&config(&input, &whole, 2, Codec::Raw), &|_| {}).unwrap();
    let old = regular_files(&whole);
    let err = merge_into(&parts, &whole, true).unwrap_err();
    assert!(
        matches!(err, sv_build::BuildError::ShardDamaged { .. }),
        "{err}"
    );
    assert_eq!(regular_files(&whole), old, "the old dataset was changed");
    verify_ok(&whole);
    // the part repaired: the merge cut short in `fresh` resumes; --force replaces
    std::fs::write(&shard, &good).unwrap();
    let resumed = merge_into(&parts, &fresh, false).unwrap();
    assert!(!resumed.up_to_date);
    assert_eq!(records(&fresh), records(&merged));
    let replaced = merge_into(&parts, &whole, true).unwrap();
    assert!(!replaced.up_to_date);
    assert_eq!(records(&whole), records(&merged));
    assert_eq!(
        regular_files(&whole).keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(!whole.join(".supervision-staging").exists());
    verify_ok(&whole);
}

/// Item 15: `build --force` over another dataset writes the new one beside it and
/// removes the old only once the new one is whole; cut short, it resumes.
#[test]
fn a_forced_build_replaces_the_old_dataset_only_once_whole() {
    let t = tempfile::tempdir().unwrap();
    let input = tree(t.path(), 2, 6);
    let out = t.path().join("out");
    build(&config(&input, &out, 2, Codec::Raw), &|_| {}).unwrap();
    let old = regular_files(&out);
    // other settings, forced, stopped part-way (too many rejects)
    for i in 0..4 {
        std::fs::write(input.join(format!("n00000001/zz_{i}.JPEG")), b"junk").unwrap();
    }
    let mut c = config(&input, &out, 2, Codec::Jpeg);
    c.force = true;
    c.max_reject_fraction = 0.1;
    let err = build(&c, &|_| {}).unwrap_err();
    assert!(
        matches!(err, sv_build::BuildError::TooManyRejects { .. }),
        "{err}"
    );
    assert_eq!(regular_files(&out), old, "the old dataset was changed");
    verify_ok(&out);
    // the same command, allowed: resumes beside the old dataset, then replaces it
    c.max_reject_fraction = 1.0;
    let s = build(&c, &|_| {}).unwrap();
    assert_eq!(s.manifest.records, 12);
    assert!(!out.join(".supervision-staging").exists());
    let fresh = t.path().join("fresh");
    build(&config(&input, &fresh, 2, Codec::Jpeg), &|_| {}).unwrap();
    assert_eq!(records(&out), records(&fresh));
    let (a, b) = (regular_files(&out), regular_files(&fresh));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert_eq!(a["manifest.json"], b["manifest.json"]);
    verify_ok(&out);
    assert!(
        build(&config(&input, &out, 2, Codec::Jpeg), &|_| {})
            .unwrap()
            .up_to_date
    );
}
