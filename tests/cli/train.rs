//! `supervision model | train | eval | predict | plot` end to end on generated shard
//! sets (CPU, `alexnet-tiny`). Compiled only with the `train` feature of sv-tests,
//! which the binary under test must also have (`--features sv-cli/train`).

use std::path::{Path, PathBuf};

use sv_core::{ClassInfo, Split};
use sv_shard::{Codec, DatasetWriter, WriterConfig};
use sv_tests::{fails, ok, s};

pub(crate) const SIDE: u32 = 72;

/// A shard set whose classes differ by the position and colour of a bright square on
/// noise: learnable by a tiny model in a few CPU epochs.
pub(crate) fn make_set(
    dir: &Path,
    split: Split,
    classes: usize,
    per_class: usize,
    seed: u64,
) -> PathBuf {
    let wnids: Vec<String> = (0..classes).map(|i| format!("n{i:08}")).collect();
    make_set_of(dir, split, &wnids, SIDE, per_class, seed)
}

/// [`make_set`] with the classes `wnids`, in that order (label i is `wnids[i]`, drawn
/// as class i), of images `side` pixels square.
pub(crate) fn make_set_of(
    dir: &Path,
    split: Split,
    wnids: &[String],
    side: u32,
    per_class: usize,
    seed: u64,
) -> PathBuf {
    let classes = wnids.len();
    let info = wnids
        .iter()
        .enumerate()
        .map(|(i, w)| ClassInfo {
            wnid: w.clone(),
            name: format!("shape {i}"),
        })
        .collect();
    let cfg = WriterConfig {
        split,
        side,
        codec: Codec::Raw,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes: info,
        max_shard_bytes: 1 << 20,
    };
    let mut w = DatasetWriter::create(dir, cfg).unwrap();
    let side = side as usize;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..per_class {
        for c in 0..classes {
            let mut px: Vec<u8> = (0..side * side * 3).map(|_| (rnd() % 96) as u8).collect();
            let (qy, qx) = ((c / 2) * side / 2, (c % 2) * side / 2);
            let jitter = (rnd() % 8) as usize + i % 3;
            for y in qy + 4 + jitter..qy + side / 2 - 4 {
                for x in qx + 4..qx + side / 2 - 4 {
                    let o = (y * side + x) * 3;
                    px[o + c % 3] = 230;
                    px[o + (c + 1) % 3] = 160;
                }
            }
            w.push(c as u32, &px).unwrap();
        }
    }
    w.finish().unwrap();
    dir.to_path_buf()
}

/// The flags the training runs here share: data and statistics, the tiny model on
/// the CPU, batch 8, lr 0.005 (at 0.01 the tiny model's loss sometimes jumps), seed 3.
pub(crate) fn tiny_run<'a>(train: &'a Path, val: &'a Path, stats: &'a Path) -> Vec<&'a str> {
    vec![
        "--train",
        s(train),
        "--val",
        s(val),
        "--stats",
        s(stats),
        "--model",
        "alexnet-tiny",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--lr",
        "0.005",
        "--seed",
        "3",
    ]
}

/// `pca compute` of `shards` into `stats` (and the mean image into `mean`).
pub(crate) fn pca(shards: &Path, stats: &Path, mean: Option<&Path>) {
    let mut args = vec![
        "pca",
        "compute",
        "--shards",
        s(shards),
        "--output",
        s(stats),
    ];
    if let Some(m) = mean {
        args.extend(["--mean-image", s(m)]);
    }
    ok(&args);
}

/// The first `n` records of `val` exported as image files into `dir`, sorted.
pub(crate) fn exported(val: &Path, dir: &Path, n: usize) -> Vec<PathBuf> {
    let limit = n.to_string();
    ok(&[
        "shard",
        "export",
        s(val),
        "--output",
        s(dir),
        "--limit",
        &limit,
    ]);
    let mut images: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    images
}

/// `eval --ten-crop --json` of checkpoint `ck` on `val`, on the CPU.
fn ten_crop_eval(ck: &Path, val: &Path) -> serde_json::Value {
    json(&ok(&[
        "eval",
        "--checkpoint",
        s(ck),
        "--val",
        s(val),
        "--ten-crop",
        "--device",
        "cpu",
        "--json",
    ]))
}

pub(crate) fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The tensor bytes of a safetensors file (everything after the header, which holds
/// the run's metadata and may differ between equivalent runs).
pub(crate) fn tensor_bytes(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n..].to_vec()
}

/// The paper-versus-option choices of issue 10 are visible in `train --help` with their
/// defaults and sources (clap wraps lines, so whitespace is normalised first).
#[test]
fn help_names_the_training_choices_with_defaults_and_sources() {
    let help = ok(&["train", "--help"]);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "--bias-decay <true|false>",
        "the paper's update rule decays every parameter w",
        "Caffe's reference bvlc_alexnet (decay_mult: 0 on biases) [default: true]",
        "--init <paper|torch|kaiming>",
        "--input-scale <raw|std>",
        "(the paper, section 2)",
        "--max-drops <MAX_DROPS> Plateau and step: divide at most this many times (the paper: 3) [default: 3]",
        "--precision <bf16|fp16|fp32>",
        "Default: bf16 on CUDA, fp32 on the CPU",
        "--channels-last <true|false>",
        "--copy-stream <true|false>",
    ] {
        assert!(help.contains(want), "`{want}` in train --help:\n{help}");
    }
}

#[test]
fn train_eval_predict_plot_and_resume() {
    let t = tempfile::tempdir().unwrap();
    let train = make_set(&t.path().join("train"), Split::Train, 4, 32, 1); // 128 images
    let val = make_set(&t.path().join("val"), Split::Val, 4, 8, 2); // 32 images
    let stats = t.path().join("pca.json");
    pca(&train, &stats, None);
    let out = t.path().join("run");
    let mut common = tiny_run(&train, &val, &stats);
    common.extend(["--log-every", "4"]);
    let mut args = vec!["train", "--out", s(&out), "--epochs", "4", "--json"];
    args.extend_from_slice(&common);
    let summary = json(&ok(&args));
    assert_eq!(summary["steps"], 64);
    assert_eq!(summary["epochs_done"], 4);
    // Chance is 75% top-1 error (4 classes); the bar is 25%.
    let top1 = summary["final_eval"]["top1_err"].as_f64().unwrap();
    assert_eq!(summary["final_eval"]["mode"], "ten-crop");
    assert!(top1 <= 0.25, "ten-crop top-1 error {top1}");
    let share = summary["data_wait_share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share));
    for f in ["last.safetensors", "best.safetensors", "metrics.jsonl"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let kinds: Vec<String> = lines
        .lines()
        .map(|l| json(l)["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "epoch").count(), 4);
    assert_eq!(kinds.last().map(String::as_str), Some("eval"));

    // eval agrees with the trainer's final evaluation.
    let ck = out.join("last.safetensors");
    let e = ten_crop_eval(&ck, &val);
    assert_eq!(e["top1_err"].as_f64().unwrap(), top1);
    assert_eq!(e["images"], 32);
    let centre = ok(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--val",
        s(&val),
        "--device",
        "cpu",
    ]);
    assert!(centre.contains("top-1 error"), "{centre}");

    // predict on exported images: names come from the checkpoint's class list.
    let images = exported(&val, &t.path().join("png"), 2);
    let mut pargs = vec![
        "predict",
        "--checkpoint",
        s(&ck),
        "--size",
        "72",
        "--device",
        "cpu",
        "--json",
    ];
    pargs.extend(images.iter().map(|p| s(p)));
    let p = json(&ok(&pargs));
    assert_eq!(p.as_array().unwrap().len(), images.len());
    let top = &p[0]["top"];
    assert_eq!(
        top.as_array().unwrap().len(),
        4,
        "top-5 capped at 4 classes"
    );
    assert!(top[0]["name"].as_str().unwrap().starts_with("shape "));
    let total: f64 = top
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["probability"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-4);

    // predict decodes through the same checks as the build: a JPEG cut short with an
    // end-of-image marker after the cut is an error naming the file, in words.
    let mut jpeg = Vec::new();
    let jpeg_config = sv_shard::WriterConfig {
        split: sv_core::Split::Train,
        side: 72,
        codec: Codec::Jpeg,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes: Vec::new(),
        max_shard_bytes: 1 << 30,
    };
    sv_shard::encode_payload(
        &jpeg_config,
        &(0..72 * 72 * 3)
            .map(|i| (i * 37 % 251) as u8)
            .collect::<Vec<u8>>(),
        &mut jpeg,
    )
    .unwrap();
    jpeg.truncate(jpeg.len() / 2);
    jpeg.extend_from_slice(&[0xFF, 0xD9]);
    let cut = t.path().join("cut.jpg");
    std::fs::write(&cut, &jpeg).unwrap();
    let err = fails(&[
        "predict",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        s(&cut),
    ]);
    assert!(
        err.contains("cut.jpg") && err.contains("truncated JPEG: scan 1 holds"),
        "{err}"
    );

    // a FIFO named as an image is refused at once, not waited on (issue 15, item 9)
    let fifo = t.path().join("pipe.jpg");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    let mut child = sv_tests::supervision()
        .args([
            "predict",
            "--checkpoint",
            s(&ck),
            "--device",
            "cpu",
            s(&fifo),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("predict waited on a FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let waited = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&waited.stderr);
    assert!(
        !waited.status.success() && err.contains("pipe.jpg") && err.contains("FIFO"),
        "{err}"
    );

    // plot
    let curves = t.path().join("curves.png");
    ok(&[
        "plot",
        s(&out.join("metrics.jsonl")),
        "--output",
        s(&curves),
    ]);
    let head = std::fs::read(&curves).unwrap();
    assert_eq!(&head[1..4], b"PNG");

    // Resume (16 steps per epoch): 5 then resumed to 10 (within epoch 0), and 14 then
    // resumed to 20 (across the epoch end: validation, schedule) equal straight runs.
    for (first, total) in [(5u64, 10u64), (14, 20)] {
        let straight = t.path().join(format!("straight-{total}"));
        let split = t.path().join(format!("split-{first}-{total}"));
        let total_s = total.to_string();
        let first_s = first.to_string();
        let train = |out: &Path, steps: &str, resume: bool| {
            let mut args = vec![
                "train",
                "--out",
                s(out),
                "--epochs",
                "3",
                "--max-steps",
                steps,
            ];
            if resume {
                args.push("--resume");
            }
            args.extend_from_slice(&common);
            ok(&args);
        };
        train(&straight, &total_s, false);
        train(&split, &first_s, false);
        train(&split, &total_s, true);
        assert!(
            tensor_bytes(&straight.join("last.safetensors"))
                == tensor_bytes(&split.join("last.safetensors")),
            "{first} + resume to {total} differs from {total} straight"
        );
    }
}

#[test]
fn synthetic_ceiling_and_bad_input() {
    let t = tempfile::tempdir().unwrap();
    let v = json(&ok(&[
        "train",
        "--synthetic-data",
        "2",
        "--model",
        "alexnet-owt-tiny",
        "--batch-size",
        "4",
        "--synthetic-classes",
        "5",
        "--device",
        "cpu",
        "--init",
        "kaiming",
        "--out",
        s(t.path()),
        "--json",
    ]));
    assert_eq!(v["mode"], "synthetic-data");
    // every --init the help names is accepted; unknown values are refused in words
    for init in ["paper", "torch", "kaiming"] {
        let args = [
            "train",
            "--synthetic-data",
            "1",
            "--model",
            "alexnet-owt-tiny",
            "--batch-size",
            "2",
            "--synthetic-classes",
            "3",
            "--device",
            "cpu",
            "--init",
            init,
            "--out",
            s(t.path()),
        ];
        ok(&args);
    }
    // the speed paths run on the CPU too, and the summary says which ran
    for (precision, layout) in [("bf16", "true"), ("fp16", "false"), ("fp32", "true")] {
        let v = json(&ok(&[
            "train",
            "--synthetic-data",
            "1",
            "--model",
            "alexnet-tiny",
            "--batch-size",
            "2",
            "--synthetic-classes",
            "3",
            "--device",
            "cpu",
            "--precision",
            precision,
            "--channels-last",
            layout,
            "--out",
            s(t.path()),
            "--json",
        ]));
        assert_eq!(v["precision"], precision);
        assert_eq!(v["channels_last"].to_string(), layout);
    }
    for (flag, value) in [
        ("--init", "xavier"),
        ("--input-scale", "unit"),
        ("--precision", "fp8"),
    ] {
        let err = fails(&[
            "train",
            "--synthetic-data",
            "1",
            "--model",
            "alexnet-owt-tiny",
            "--device",
            "cpu",
            flag,
            value,
            "--out",
            s(t.path()),
        ]);
        assert!(err.contains(value), "{flag} {value}: {err}");
    }
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);
    let err = fails(&[
        "train",
        "--train",
        s(&t.path().join("missing")),
        "--out",
        s(t.path()),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("missing"), "{err}");
    let err = fails(&[
        "eval",
        "--checkpoint",
        s(&t.path().join("none.safetensors")),
        "--val",
        s(t.path()),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("none.safetensors"), "{err}");
    let bad = t.path().join("bad.jsonl");
    std::fs::write(&bad, "not json\n").unwrap();
    let err = fails(&["plot", s(&bad), "--output", s(&t.path().join("x.png"))]);
    assert!(err.contains("bad.jsonl:1"), "{err}");
}

/// The names and shapes in a safetensors file's header.
fn tensor_shapes(path: &Path) -> serde_json::Value {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let mut shapes = serde_json::Map::new();
    for (k, v) in header.as_object().unwrap() {
        if k != "__metadata__" {
            shapes.insert(k.clone(), v["shape"].clone());
        }
    }
    shapes.into()
}

#[test]
fn mean_image_is_subtracted_and_kept_in_the_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let train = make_set(&t.path().join("train"), Split::Train, 4, 8, 5); // 32 images
    let val = make_set(&t.path().join("val"), Split::Val, 4, 2, 6);
    let (stats, mean) = (t.path().join("pca.json"), t.path().join("mean.npy"));
    pca(&train, &stats, Some(&mean));
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--out", s(out), "--epochs", "1", "--json"];
        args.extend(tiny_run(&train, &val, &stats));
        args.extend_from_slice(extra);
        json(&ok(&args))
    };
    let out = t.path().join("run");
    let summary = run(&out, &["--mean-image", s(&mean)]);
    let ck = out.join("last.safetensors");
    assert_eq!(
        tensor_shapes(&ck)["input.mean_image"],
        serde_json::json!([3, SIDE, SIDE])
    );
    // the same run with the channel mean only trains to other weights
    let plain = t.path().join("plain");
    run(&plain, &[]);
    assert!(tensor_shapes(&plain.join("last.safetensors"))["input.mean_image"].is_null());
    assert_ne!(
        tensor_bytes(&ck),
        tensor_bytes(&plain.join("last.safetensors"))
    );
    // eval takes the mean image from the checkpoint: it reproduces the final ten-crop
    // evaluation of the run
    let e = ten_crop_eval(&ck, &val);
    assert_eq!(e["top1_err"], summary["final_eval"]["top1_err"]);
    // predict sizes images to the mean image's side unless told otherwise
    let image = exported(&val, &t.path().join("png"), 1).remove(0);
    let p = json(&ok(&[
        "predict",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        "--json",
        s(&image),
    ]));
    assert_eq!(p[0]["top"].as_array().unwrap().len(), 4);
    let err = fails(&[
        "predict",
        "--checkpoint",
        s(&ck),
        "--size",
        "64",
        "--device",
        "cpu",
        s(&image),
    ]);
    assert!(err.contains("mean image"), "{err}");

    // a mean image of another side is refused, naming the file
    let small = t.path().join("small");
    let cfg = WriterConfig {
        split: Split::Train,
        side: 16,
        codec: Codec::Raw,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes: vec![ClassInfo {
            wnid: "n00000000".into(),
            name: "one".into(),
        }],
        max_shard_bytes: 1 << 20,
    };
    let mut w = DatasetWriter::create(&small, cfg).unwrap();
    // pca compute refuses statistics without variance: the pixels must vary.
    let pixels: Vec<u8> = (0..16 * 16 * 3).map(|i| (i % 251) as u8).collect();
    w.push(0, &pixels).unwrap();
    w.finish().unwrap();
    let small_mean = t.path().join("small.npy");
    let small_stats = t.path().join("small.json");
    pca(&small, &small_stats, Some(&small_mean));
    let err = fails(&[
        "train",
        "--out",
        s(&t.path().join("bad")),
        "--train",
        s(&train),
        "--model",
        "alexnet-tiny",
        "--device",
        "cpu",
        "--mean-image",
        s(&small_mean),
    ]);
    assert!(err.contains("small.npy") && err.contains("16x16"), "{err}");
}
