//! What `train`, `eval` and `predict` refuse, and what they keep safe (issue 15): class
//! lists compared wherever a checkpoint meets a dataset or two datasets meet, a run
//! never overwritten by another, a resumed run keeping its settings, records and
//! checkpoints checked against their CRCs, numbers and sizes refused in words before
//! any work, a full disk during a checkpoint, a shard truncated under training. CPU,
//! `alexnet-tiny`, a few steps each.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sv_core::Split;
use sv_tests::{fails, names, ok, s};

use super::train::{SIDE, json, make_set, make_set_of, pca, tensor_bytes, tiny_run};

/// A train set of 4 classes (`per_class` images each, batch 8), a val set of 4 images
/// with the same classes, and their statistics.
struct Sets {
    tmp: tempfile::TempDir,
    train: PathBuf,
    val: PathBuf,
    stats: PathBuf,
}

fn sets(per_class: usize) -> Sets {
    let tmp = tempfile::tempdir().unwrap();
    let train = make_set(&tmp.path().join("train"), Split::Train, 4, per_class, 1);
    let val = make_set(&tmp.path().join("val"), Split::Val, 4, 1, 2);
    let stats = tmp.path().join("pca.json");
    pca(&train, &stats, None);
    Sets {
        tmp,
        train,
        val,
        stats,
    }
}

impl Sets {
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `train --out OUT` with the shared tiny-run flags, then `extra` (a flag given
    /// there replaces the shared one).
    fn train<'a>(&'a self, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "train",
            "--out",
            s(out),
            "--no-ten-crop",
            "--log-every",
            "1",
        ];
        args.extend(tiny_run(&self.train, &self.val, &self.stats));
        for pair in extra.chunk_by(|_, b| !b.starts_with("--")) {
            match args.iter().position(|a| *a == pair[0]) {
                Some(i) if pair.len() == 2 => args[i + 1] = pair[1],
                _ => args.extend_from_slice(pair),
            }
        }
        args
    }

    /// A run of `steps` steps in `out` (a new folder).
    fn trained(&self, out: &Path, steps: &str) -> PathBuf {
        ok(&self.train(out, &["--max-steps", steps]));
        out.join("last.safetensors")
    }
}

fn wnids(order: &[usize]) -> Vec<String> {
    order.iter().map(|i| format!("n{i:08}")).collect()
}

/// The run files in `out` (empty when `out` does not exist).
fn run_files(out: &Path) -> Vec<String> {
    if out.exists() { names(out) } else { Vec::new() }
}

/// Rust debug text that must never reach a user.
fn assert_words(err: &str) {
    for debug in [
        "Os {",
        "Some(",
        "None",
        "HeaderToo",
        "InvalidHeader",
        "IoError",
        "Kind(",
    ] {
        assert!(!err.contains(debug), "debug text {debug:?} in: {err}");
    }
}

#[test]
fn val_classes_must_be_train_classes() {
    let d = sets(4);
    // val built without --classes-from: the same classes in another order, one missing
    for (name, order, want) in [
        (
            "swapped",
            vec![0, 2, 1, 3],
            "label 1 is n00000001 (shape 1) in train",
        ),
        (
            "missing",
            vec![0, 1, 3],
            "label 2 is n00000002 (shape 2) in train",
        ),
    ] {
        let val = make_set_of(&d.path(name), Split::Val, &wnids(&order), SIDE, 1, 2);
        let out = d.path(&format!("run-{name}"));
        let err = fails(&d.train(&out, &["--max-steps", "1", "--val", s(&val)]));
        assert!(err.contains(want) && err.contains(s(&val)), "{name}: {err}");
        assert_words(&err);
        assert!(
            run_files(&out).is_empty(),
            "{name}: refused before any work"
        );
    }
    // val of another image side
    let val = make_set_of(&d.path("wide"), Split::Val, &wnids(&[0, 1, 2, 3]), 80, 1, 2);
    let out = d.path("run-wide");
    let err = fails(&d.train(&out, &["--max-steps", "1", "--val", s(&val)]));
    assert!(err.contains("80x80") && err.contains("72x72"), "{err}");
    assert!(run_files(&out).is_empty());
}

#[test]
fn a_checkpoint_meets_only_datasets_with_its_classes() {
    let d = sets(2);
    let ck = d.trained(&d.path("run"), "1");
    let swapped = make_set_of(
        &d.path("swapped"),
        Split::Val,
        &wnids(&[1, 0, 2, 3]),
        SIDE,
        1,
        2,
    );
    // eval: same count, other order
    let err = fails(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--val",
        s(&swapped),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("label 0 is n00000000 (shape 0) in the checkpoint")
            && err.contains("which is label 1"),
        "{err}"
    );
    // --resume on a training set whose classes differ
    let other = make_set_of(
        &d.path("other"),
        Split::Train,
        &wnids(&[0, 1, 2, 5]),
        SIDE,
        2,
        1,
    );
    let out = d.path("run");
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let err = fails(&d.train(
        &out,
        &["--resume", "--max-steps", "2", "--train", s(&other)],
    ));
    assert!(
        err.contains("label 3 is n00000003 (shape 3) in the checkpoint but n00000005"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);
    // predict names classes from the checkpoint: a class list that does not match
    // its model (checksum recomputed, as an outside tool could) is refused
    let forged = d.path("forged.safetensors");
    let (mut h, data) = sv_header(&ck);
    let meta = h["__metadata__"]["supervision"].as_str().unwrap();
    let mut m: serde_json::Value = serde_json::from_str(meta).unwrap();
    m["classes"].as_array_mut().unwrap().pop();
    let meta = serde_json::to_string(&m).unwrap();
    let crc = crc_of(
        &meta,
        h["__metadata__"]["supervision.tensor_crc32"]
            .as_str()
            .unwrap(),
    );
    h["__metadata__"]["supervision"] = meta.into();
    h["__metadata__"]["supervision.crc32"] = format!("{crc:08x}").into();
    write_safetensors(&forged, &h, &data);
    let image = super::train::exported(&d.val, &d.path("png"), 1).remove(0);
    let err = fails(&[
        "predict",
        "--checkpoint",
        s(&forged),
        "--device",
        "cpu",
        s(&image),
    ]);
    assert!(
        err.contains("its class list has 3 classes but its model 4"),
        "{err}"
    );
}

/// The CRC a checkpoint keeps over its metadata (the recipe in docs/training.md).
fn crc_of(meta: &str, tensors: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(meta.as_bytes());
    h.update(b"\n");
    h.update(tensors.as_bytes());
    h.finalize()
}

fn sv_header(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&b[8..8 + n]).unwrap(),
        b[8 + n..].to_vec(),
    )
}

fn write_safetensors(path: &Path, header: &serde_json::Value, data: &[u8]) {
    let text = serde_json::to_vec(header).unwrap();
    let mut b = (text.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&text);
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_new_run_never_overwrites_an_old_one() {
    let d = sets(2);
    let out = d.path("run");
    // 1 step, validated: last, best, metrics, epoch-0001 (--keep), a TensorBoard file
    ok(&d.train(&out, &["--epochs", "1", "--keep", "1"]));
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let leftover = out.join(".last.safetensors.999999.0.tmp");
    std::fs::write(&leftover, "killed writer").unwrap();
    let history = out.join("epoch-0001.safetensors");
    let history_leftover = out.join(".epoch-0002.safetensors.999999.link.tmp");
    std::fs::write(&history_leftover, "killed writer").unwrap();
    let events = || sv_tests::names(&out.join("tensorboard"));
    assert_eq!(events().len(), 1);
    assert!(history.exists());
    let files = ["last.safetensors", "best.safetensors", "metrics.jsonl"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    // forgetting --resume, or another run pointed at the same folder
    let err = fails(&d.train(&out, &["--epochs", "2"]));
    assert!(
        err.contains("already holds a training run")
            && err.contains("last.safetensors, best.safetensors, metrics.jsonl, epoch-0001")
            && err.contains("--resume")
            && err.contains("--force"),
        "{err}"
    );
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(out.join(f)).unwrap(), b, "{f} untouched");
    }
    let err = fails(&d.train(&out, &["--epochs", "1", "--resume", "--force"]));
    assert!(err.contains("cannot be used with"), "{err}");
    // --force starts clean: only the run's own files go
    let v = json(&ok(&d.train(
        &out,
        &["--max-steps", "1", "--seed", "9", "--force", "--json"],
    )));
    assert_eq!(v["steps"], 1);
    assert!(!leftover.exists());
    // the old run's history, its leftovers and its TensorBoard events went too: a
    // new run's curves are not drawn over the old run's (issue 15, item 5)
    assert!(!history.exists() && !history_leftover.exists());
    assert_eq!(events().len(), 1, "{:?}", events());
    assert_ne!(
        std::fs::read(out.join("best.safetensors")).unwrap(),
        before[1]
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    // the new run's step and epoch end, not the old run's lines before them
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(!lines.contains("\"kind\":\"eval\""), "{lines}");
    // --resume with best but no last: refused, not a silent new run beside an old best
    std::fs::copy(out.join("last.safetensors"), out.join("best.safetensors")).unwrap();
    std::fs::remove_file(out.join("last.safetensors")).unwrap();
    let err = fails(&d.train(&out, &["--epochs", "1", "--resume"]));
    assert!(err.contains("no last.safetensors"), "{err}");
}

#[test]
fn a_resumed_run_keeps_its_settings() {
    let d = sets(8); // 4 steps an epoch
    // 3 steps straight, and 2 + 1 resumed with nothing but the folder, the data and a
    // step count: statistics, lighting, seed, rates come from the checkpoint
    let straight = d.path("straight");
    d.trained(&straight, "3");
    let split = d.path("split");
    d.trained(&split, "2");
    ok(&[
        "train",
        "--resume",
        "--out",
        s(&split),
        "--train",
        s(&d.train),
        "--device",
        "cpu",
        "--max-steps",
        "3",
    ]);
    assert!(
        tensor_bytes(&straight.join("last.safetensors"))
            == tensor_bytes(&split.join("last.safetensors")),
        "a bare --resume continues the run exactly"
    );
    // flags that would change the run are refused, each named with both values
    let metrics = std::fs::read(split.join("metrics.jsonl")).unwrap();
    let err = fails(&d.train(
        &split,
        &[
            "--resume",
            "--batch-size",
            "4",
            "--lr",
            "0.1",
            "--seed",
            "4",
            "--model",
            "alexnet-owt-tiny",
            "--momentum",
            "0.5",
            "--schedule",
            "step",
            "--no-mirror",
            "--lighting",
            "none",
            "--bias-decay",
            "false",
            "--input-scale",
            "raw",
            "--precision",
            "fp32",
        ],
    ));
    for want in [
        "--batch-size 4 (the checkpoint's run: 8)",
        "--lr 0.1 (the checkpoint's run: 0.005)",
        "--seed 4 (the checkpoint's run: 3)",
        "--model alexnet-owt-tiny (the checkpoint's run: alexnet-tiny)",
        "--momentum 0.5 (the checkpoint's run: 0.9)",
        "--schedule step (the checkpoint's run: plateau)",
        "--no-mirror true (the checkpoint's run: false)",
        "--lighting none (the checkpoint's run: paper)",
        "--bias-decay false (the checkpoint's run: true)",
        "--input-scale raw (the checkpoint's run: std)",
        "--force",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!err.contains("--precision"), "precision may change: {err}");
    assert_words(&err);
    // the schedule's parameters by their own flags (the divisor, not the factor the
    // checkpoint keeps), a flag of another schedule kind, and a value the run already
    // uses (alexnet-tiny's own init), which is no change
    let err = fails(&d.train(
        &split,
        &[
            "--resume",
            "--lr-divisor",
            "5",
            "--step-every",
            "3",
            "--init",
            "kaiming",
            "--weight-decay",
            "0.001",
        ],
    ));
    for want in [
        "--lr-divisor 5 (the checkpoint's run: 10)",
        "--step-every (the checkpoint's run uses the plateau schedule)",
        "--weight-decay 0.001 (the checkpoint's run: 0.0005)",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(
        !err.contains("--init"),
        "kaiming is the run's own init: {err}"
    );
    assert_eq!(std::fs::read(split.join("metrics.jsonl")).unwrap(), metrics);
    // other statistics, another training set with the same classes
    let other = make_set(&d.path("other"), Split::Train, 4, 8, 7);
    let other_stats = d.path("other.json");
    pca(&other, &other_stats, None);
    let err = fails(&d.train(
        &split,
        &["--resume", "--max-steps", "4", "--stats", s(&other_stats)],
    ));
    assert!(err.contains("--stats"), "{err}");
    let err = fails(&d.train(
        &split,
        &["--resume", "--max-steps", "4", "--train", s(&other)],
    ));
    assert!(err.contains("is not the training set"), "{err}");
    // what may change is applied and said; the same values typed again are no conflict
    let out = sv_tests::run(
        &d.train(
            &split,
            &["--resume", "--max-steps", "4", "--log-every", "2"],
        ),
        true,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-steps 4 (the checkpoint's run: 3)")
            && err.contains("--log-every 2 (the checkpoint's run: 1)"),
        "{err}"
    );
}

#[test]
fn numbers_and_sizes_are_refused_in_words_before_any_work() {
    let d = sets(2);
    let out = d.path("run");
    for (flag, value, want) in [
        ("--momentum", "-5", "must be 0 or more and below 1"),
        ("--momentum", "1", "must be 0 or more and below 1"),
        ("--lr", "0", "must be above 0"),
        ("--lr", "nan", "must be above 0"),
        ("--lr", "inf", "must be above 0"),
        ("--weight-decay", "-0.1", "must be 0 or more"),
        ("--threshold", "2", "must be 0 or more and below 1"),
        ("--lr-divisor", "1", "must be above 1"),
        ("--loss-scale", "0", "must be above 0"),
        ("--batch-size", "0", "must be at least 1"),
        ("--batch-size", "-1", "not a whole number"),
        ("--epochs", "0", "must be at least 1"),
        ("--max-steps", "0", "must be at least 1"),
        ("--log-every", "0", "must be at least 1"),
        ("--val-limit", "0", "must be at least 1"),
        ("--workers", "0", "must be at least 1"),
        ("--step-every", "0", "must be at least 1"),
    ] {
        let started = Instant::now();
        let err = fails(&d.train(&out, &[flag, value]));
        assert!(
            err.contains(flag) && err.contains(want),
            "{flag} {value}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{flag}: refused at once"
        );
    }
    assert!(run_files(&out).is_empty());
    // the paper's model on 72 px shards: its 227 crops do not fit, said before training
    let err = fails(&d.train(&out, &["--model", "alexnet"]));
    assert!(
        err.contains("227x227 crops") && err.contains("72x72 images"),
        "{err}"
    );
    assert!(run_files(&out).is_empty(), "nothing written");
    // a checkpoint meets images of another side: eval and predict refuse
    let ck = d.trained(&out, "1");
    let wide = make_set_of(&d.path("wide"), Split::Val, &wnids(&[0, 1, 2, 3]), 96, 1, 3);
    let err = fails(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--val",
        s(&wide),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("trained on 72x72 images") && err.contains("96x96"),
        "{err}"
    );
    let image = super::train::exported(&d.val, &d.path("png"), 1).remove(0);
    let err = fails(&[
        "predict",
        "--checkpoint",
        s(&ck),
        "--size",
        "96",
        "--device",
        "cpu",
        s(&image),
    ]);
    assert!(err.contains("trained on 72x72 images"), "{err}");
    for (cmd, flag) in [
        ("eval", "--batch-size"),
        ("eval", "--limit"),
        ("predict", "--top"),
    ] {
        let mut args = vec![cmd, "--checkpoint", s(&ck), "--device", "cpu", flag, "0"];
        args.push(if cmd == "eval" { "--val" } else { s(&image) });
        if cmd == "eval" {
            args.push(s(&d.val));
        }
        let err = fails(&args);
        assert!(err.contains("must be at least 1"), "{cmd} {flag}: {err}");
    }
}

/// Flips one bit at `offset` of `path`.
fn flip(path: &Path, offset: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[offset] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

#[test]
fn damaged_records_stop_training_naming_shard_and_record() {
    let d = sets(2);
    let shard = d.train.join("train-00000.svs");
    flip(&shard, 4096 + 3 * SIDE as usize * SIDE as usize * 3 + 100); // record 3's payload
    for loader in ["pipeline", "simple"] {
        let out = d.path(&format!("run-{loader}"));
        let err = fails(&d.train(&out, &["--max-steps", "2", "--loader", loader]));
        assert!(
            err.contains("train-00000.svs")
                && err.contains("record 3")
                && err.contains("checksum mismatch"),
            "{loader}: {err}"
        );
        assert_words(&err);
        let out = d.path(&format!("unchecked-{loader}"));
        ok(&d.train(
            &out,
            &["--max-steps", "2", "--loader", loader, "--no-verify"],
        ));
    }
    // validation and eval read records checked too
    let ck = d.path("unchecked-simple").join("last.safetensors");
    flip(&d.val.join("val-00000.svs"), 4096 + 100);
    let err = fails(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--val",
        s(&d.val),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("val-00000.svs") && err.contains("record 0"),
        "{err}"
    );
}

#[test]
fn damaged_checkpoints_are_refused_naming_file_and_tensor() {
    let d = sets(2);
    let ck = d.trained(&d.path("run"), "1");
    let image = super::train::exported(&d.val, &d.path("png"), 1).remove(0);
    let (h, _) = sv_header(&ck);
    let n = u64::from_le_bytes(std::fs::read(&ck).unwrap()[..8].try_into().unwrap()) as usize;
    let start = h["conv1.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    let bad = d.path("bad.safetensors");
    std::fs::copy(&ck, &bad).unwrap();
    flip(&bad, 8 + n + start + 40);
    let eval = |p: &Path| {
        fails(&[
            "eval",
            "--checkpoint",
            s(p),
            "--val",
            s(&d.val),
            "--device",
            "cpu",
        ])
    };
    let predict = |p: &Path| {
        fails(&[
            "predict",
            "--checkpoint",
            s(p),
            "--device",
            "cpu",
            s(&image),
        ])
    };
    for err in [eval(&bad), predict(&bad)] {
        assert!(
            err.contains("bad.safetensors") && err.contains("tensor `conv1.weight` is damaged"),
            "{err}"
        );
        assert_words(&err);
    }
    // --resume reads the run's own last.safetensors
    let out = d.path("run");
    flip(&out.join("last.safetensors"), 8 + n + start + 40);
    let err = fails(&d.train(&out, &["--resume", "--max-steps", "2"]));
    assert!(err.contains("tensor `conv1.weight` is damaged"), "{err}");
    // not checkpoints: short, truncated, a folder, a FIFO: words, at once
    std::fs::write(&bad, b"hello").unwrap();
    let err = eval(&bad);
    assert!(err.contains("shorter than a safetensors header"), "{err}");
    std::fs::write(&bad, &std::fs::read(&ck).unwrap()[..n]).unwrap();
    let err = eval(&bad);
    assert!(err.contains("bad.safetensors"), "{err}");
    assert_words(&err);
    let err = eval(d.tmp.path());
    assert!(err.contains("a directory, not a regular file"), "{err}");
    assert!(
        !err.contains("(os error 21): Is a directory"),
        "said once: {err}"
    );
    let fifo = d.path("fifo.safetensors");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid C string; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = eval(&fifo);
    assert!(err.contains("FIFO"), "{err}");
}

/// The train/epoch lines of a metrics file: (kind, step, epoch).
fn lines(out: &Path) -> Vec<(String, u64, u64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v = json(l);
            (
                v["kind"].as_str().unwrap().to_string(),
                v["step"].as_u64().unwrap(),
                v["epoch"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_full_disk_keeps_the_last_checkpoint_and_a_resume_logs_each_step_once() {
    let d = sets(4); // 2 steps an epoch
    let out = d.path("run");
    ok(&d.train(&out, &["--epochs", "1"]));
    let last = std::fs::read(out.join("last.safetensors")).unwrap();
    // epoch 2's checkpoint (about 2 MB) does not fit: writes past 512 KiB fail
    let mut cmd = sv_tests::supervision();
    cmd.args(d.train(&out, &["--epochs", "2", "--resume"]));
    sv_tests::limit_file_size(&mut cmd, 512 << 10);
    let o: Output = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("last.safetensors") && err.contains("File too large"),
        "{err}"
    );
    assert_words(&err);
    assert_eq!(std::fs::read(out.join("last.safetensors")).unwrap(), last);
    let left: Vec<_> = names(&out)
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // space again: the resumed run logs epoch 1 once, after epoch 0's lines (the final
    // evaluation of the 1-epoch run goes: the run continues past it)
    ok(&d.train(&out, &["--epochs", "2", "--resume"]));
    let want: Vec<(String, u64, u64)> = [
        ("train", 1, 0),
        ("train", 2, 0),
        ("epoch", 2, 0),
        ("train", 3, 1),
        ("train", 4, 1),
        ("epoch", 4, 1),
        ("eval", 4, 0),
    ]
    .iter()
    .map(|&(k, s, e)| (k.to_string(), s, e))
    .collect();
    assert_eq!(lines(&out), want);
}

#[test]
fn a_shard_truncated_under_training_is_named() {
    let d = sets(4);
    let out = d.path("run");
    let mut child = sv_tests::supervision()
        .args(d.train(&out, &["--epochs", "500", "--loader", "simple"]))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // a watchdog: a run that never hits the truncated pages is killed, and fails below
    let watchdog = std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: signal 0 only checks the process exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return;
            }
        }
        // SAFETY: the child this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut text = String::new();
    while err.read_line(&mut text).unwrap() > 0 && !text.contains("training alexnet-tiny") {}
    let shard = d.train.join("train-00000.svs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(4096)
        .unwrap();
    std::io::Read::read_to_string(&mut err, &mut text).unwrap();
    let status = child.wait().unwrap();
    watchdog.join().unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "error: {}: the shard file shrank while it was being read",
            shard.display()
        )),
        "{text}"
    );
}

/// Issue 26, items 3 and 5: a number the trainer cannot hold (f32 is its number type:
/// rates, decay, momentum and the loss scale become f32 scalars on the device), or a
/// count that would size threads or memory without bound, is refused naming the flag
/// and the limit, before the output folder is even created (a panic inside libtorch
/// used to leave an empty metrics.jsonl and an event file that forced --force).
#[test]
fn numbers_beyond_f32_and_counts_beyond_their_limits_are_refused_before_any_file() {
    let d = sets(2);
    let out = d.path("run");
    let big = "must be at most 3.4028235e38";
    let tiny = "1.1754944e-38";
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--lr", "1e39"], "--lr", big),
        (&["--lr", "3.5e38"], "--lr", big),
        (&["--lr", "1e-39"], "--lr", tiny),
        (&["--lr", "-1e39"], "--lr", "must be above 0"),
        (&["--weight-decay", "1e300"], "--weight-decay", big),
        (&["--weight-decay", "1e-300"], "--weight-decay", tiny),
        (
            &["--weight-decay", "nan"],
            "--weight-decay",
            "must be 0 or more",
        ),
        (&["--momentum", "1e-45"], "--momentum", tiny),
        (
            &["--loss-scale", "1e300", "--precision", "fp16"],
            "--loss-scale",
            big,
        ),
        (
            &["--loss-scale", "1e-300", "--precision", "fp16"],
            "--loss-scale",
            tiny,
        ),
        (&["--lr-divisor", "1e300"], "--lr-divisor", big),
        // representable each, but the decay step (weight decay x rate) is not
        (
            &["--weight-decay", "1e30", "--lr", "1e10"],
            "--weight-decay",
            big,
        ),
        // the step schedule divides 0.01 by 1e10 three times: 1e-32 is f32, 1e-42 is 0
        (
            &[
                "--schedule",
                "step",
                "--step-every",
                "1",
                "--lr-divisor",
                "1e10",
                "--max-drops",
                "4",
            ],
            "--max-drops",
            tiny,
        ),
        (
            &["--workers", "100000000"],
            "--workers",
            "must be at most 1024",
        ),
        (
            &["--workers", "18446744073709551615"],
            "--workers",
            "must be at most 1024",
        ),
        (
            &["--batch-size", "4611686018427387904"],
            "--batch-size",
            "must be at most 65536",
        ),
        (
            &["--synthetic-classes", "10000000"],
            "--synthetic-classes",
            "must be at most",
        ),
        (
            &["--bucket-mib", "18446744073709551615"],
            "--bucket-mib",
            "must be at most",
        ),
        (
            &["--stall-timeout", "18446744073709551615"],
            "--stall-timeout",
            "must be at most",
        ),
        (
            &["--rendezvous-timeout", "18446744073709551615"],
            "--rendezvous-timeout",
            "must be at most",
        ),
    ];
    for (extra, flag, want) in cases {
        let o = sv_tests::run(&d.train(&out, extra), false);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.code() == Some(1) || o.status.code() == Some(2),
            "{extra:?}: exit {:?}, not a refusal: {err}",
            o.status
        );
        assert!(err.contains(flag) && err.contains(want), "{extra:?}: {err}");
        assert_words(&err);
        assert!(!out.exists(), "{extra:?}: {:?} written", run_files(&out));
    }
    // the same limit on evaluation's batch (a "capacity overflow" panic before)
    let ck = d.trained(&d.path("ok"), "1");
    let err = fails(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--val",
        s(&d.val),
        "--device",
        "cpu",
        "--batch-size",
        "4611686018427387904",
    ]);
    assert!(
        err.contains("--batch-size") && err.contains("must be at most 65536"),
        "{err}"
    );
}
