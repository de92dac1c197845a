//! What a run leaves for a person: progress lines in logs when stderr is not a terminal,
//! TensorBoard event files, checkpoint history (`train --keep`) and a readable plot.

use std::path::{Path, PathBuf};

use sv_tests::{fails, ok, s, supervision};

/// Runs `supervision ARGS` with stderr piped (not a terminal), expecting success;
/// returns (stdout, stderr).
fn logged(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = supervision();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn supervision");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "supervision {args:?} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    (stdout, stderr)
}

/// The progress lines of a stderr capture (what `tracing` wrote at info level).
fn progress_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains(" INFO sv_cli::progress: "))
        .collect()
}

/// A small synth tree: 4 classes x `per_class` train images and 2 val images each,
/// 80-160 px sides. Returns its folder and synth's stderr.
fn small_synth(dir: &Path, per_class: u32, env: &[(&str, &str)]) -> (PathBuf, String) {
    let root = dir.join("imagenet");
    let per_class = per_class.to_string();
    let (_, err) = logged(
        &[
            "synth",
            "--output",
            s(&root),
            "--classes",
            "4",
            "--per-class",
            &per_class,
            "--val-per-class",
            "2",
            "--min-side",
            "80",
            "--max-side",
            "160",
            "--seed",
            "5",
        ],
        env,
    );
    (root, err)
}

#[test]
fn data_commands_log_progress_when_stderr_is_not_a_terminal() {
    let t = tempfile::tempdir().unwrap();
    let every_update = [("SUPERVISION_PROGRESS_SECS", "0")];
    let (root, err) = small_synth(t.path(), 3, &every_update);
    let lines = progress_lines(&err);
    assert!(
        lines.iter().any(|l| l.contains("synth 4/20 images (20%")),
        "a count line per update:\n{err}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("synth finished: 20 images in "),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "colour codes in a log:\n{err}");

    // The default interval (30 s) leaves only the closing line of a short build.
    let shards = t.path().join("train");
    let (_, err) = logged(
        &[
            "shard",
            "build",
            "--input",
            s(&root.join("train")),
            "--output",
            s(&shards),
            "--size",
            "72",
        ],
        &[],
    );
    let lines = progress_lines(&err);
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].ends_with("shard build: shard 1 written"), "{err}");
    assert!(
        lines[1].contains("shard build finished: 12 images in "),
        "{err}"
    );

    let stats = t.path().join("pca.json");
    let (_, err) = logged(
        &[
            "pca",
            "compute",
            "--shards",
            s(&shards),
            "--output",
            s(&stats),
        ],
        &every_update,
    );
    assert!(
        progress_lines(&err)
            .iter()
            .any(|l| l.contains("pca compute finished: 12 images")),
        "{err}"
    );
    // RUST_LOG replaces the default filter: warnings only, no progress lines.
    let (_, err) = logged(&["shard", "verify", s(&shards)], &[("RUST_LOG", "warn")]);
    assert!(progress_lines(&err).is_empty(), "{err}");
    let (_, err) = logged(&["shard", "verify", s(&shards)], &[]);
    assert!(
        progress_lines(&err)
            .iter()
            .any(|l| l.contains("shard verify finished: ")),
        "{err}"
    );
}

/// metrics.jsonl lines of a short run whose learning rate drops tenfold.
fn metrics_file(path: &Path) {
    let mut lines = Vec::new();
    let mut lr = 0.01;
    for epoch in 0..4u64 {
        for w in 1..=3u64 {
            let step = epoch * 6 + 2 * w;
            let loss = 2.0 / (1.0 + step as f64 / 4.0);
            lines.push(
                serde_json::json!({"kind": "train", "step": step, "epoch": epoch,
                "loss": loss, "top1_err": loss / 2.5, "lr": lr, "images_per_s": 100.0 + step as f64,
                "data_wait_share": 0.02}),
            );
        }
        if epoch == 2 {
            lr /= 10.0;
        }
        let step = epoch * 6 + 6;
        lines.push(
            serde_json::json!({"kind": "epoch", "step": step, "epoch": epoch,
            "train_loss": 1.0 / (1.0 + epoch as f64), "val_top1_err": 0.6 / (1.0 + epoch as f64),
            "val_top5_err": 0.2 / (1.0 + epoch as f64), "lr": lr, "images_per_s": 110.0,
            "data_wait_share": 0.02}),
        );
    }
    lines.push(
        serde_json::json!({"kind": "eval", "step": 24, "mode": "ten-crop", "images": 40,
        "top1_err": 0.1, "top5_err": 0.0}),
    );
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn plot_draws_a_titled_labelled_figure_as_svg_or_png() {
    let t = tempfile::tempdir().unwrap();
    let metrics = t.path().join("metrics.jsonl");
    metrics_file(&metrics);

    let svg = t.path().join("curves.svg");
    ok(&[
        "plot",
        s(&metrics),
        "--output",
        s(&svg),
        "--title",
        "Run 7 curves",
    ]);
    let text = std::fs::read_to_string(&svg).unwrap();
    let texts: Vec<&str> = text
        .split("<text")
        .skip(1)
        .filter_map(|t| {
            t.split_once('>')
                .and_then(|(_, rest)| rest.split_once("</text>"))
        })
        .map(|(inner, _)| inner.trim())
        .collect();
    for want in [
        "Run 7 curves",  // title
        "Training loss", // panel captions
        "Classification error",
        "Learning rate",
        "step (batches)", // axis labels with units
        "cross-entropy loss (nats)",
        "error (%)",
        "learning rate (log scale)",
        "training images / s",
        "val top-1, per epoch", // legends: train and val told apart
        "val top-5, per epoch",
        "train top-1, per window",
        "final ten-crop top-1: 10.0%",
        "1e-2", // log-scale ticks
        "1e-3",
        "20", // a step tick
    ] {
        assert!(texts.contains(&want), "no <text>{want}</text> in {texts:?}");
    }

    let png = t.path().join("curves.png");
    ok(&["plot", s(&metrics), "--output", s(&png)]);
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1400, 900));
    // Text is the only thing drawn in the title band and left of the first y axis:
    // dark, anti-aliased pixels there mean glyphs were rendered.
    let dark = |x0: u32, y0: u32, x1: u32, y1: u32| {
        let mut n = 0;
        for y in y0..y1 {
            for x in x0..x1 {
                if img.get_pixel(x, y).0.iter().all(|&c| c < 110) {
                    n += 1;
                }
            }
        }
        n
    };
    let title_band = dark(0, 0, 1400, 40);
    assert!(title_band > 300, "title band: {title_band} dark pixels");
    let y_label_band = dark(0, 120, 30, 400);
    assert!(
        y_label_band > 100,
        "y-axis label band: {y_label_band} dark pixels"
    );
    let greys = img
        .pixels()
        .filter(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2] && (40..220).contains(&p.0[0]))
        .count();
    assert!(greys > 1000, "anti-aliased glyph edges: {greys}");

    let err = fails(&["plot", s(&metrics), "--output", s(&t.path().join("c.pdf"))]);
    assert!(err.contains(".png or .svg"), "{err}");
    // The figure is written atomically (issue 15, item 16): a write that fails (a
    // file-size limit standing in for a full disk) leaves the old figure whole and no
    // temporary file; the error names the file.
    for out in [&svg, &png] {
        let before = std::fs::read(out).unwrap();
        let mut cmd = supervision();
        cmd.args(["plot", s(&metrics), "--output", s(out)]);
        sv_tests::limit_file_size(&mut cmd, 4096);
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "plot passed the file-size limit");
        assert!(
            err.contains(s(out)) && err.contains("File too large"),
            "{err}"
        );
        assert_eq!(std::fs::read(out).unwrap(), before);
        let names = sv_tests::names(t.path());
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }
}

#[cfg(feature = "train")]
#[test]
fn train_logs_windows_and_epochs_writes_tensorboard_and_keeps_history() {
    let t = tempfile::tempdir().unwrap();
    let (root, _) = small_synth(t.path(), 8, &[]);
    let (train, val) = (t.path().join("train"), t.path().join("val"));
    ok(&[
        "shard",
        "build",
        "--input",
        s(&root.join("train")),
        "--output",
        s(&train),
        "--size",
        "72",
    ]);
    ok(&[
        "shard",
        "build",
        "--input",
        s(&root.join("val")),
        "--split",
        "val",
        "--classes-from",
        s(&train),
        "--output",
        s(&val),
        "--size",
        "72",
    ]);
    let stats = t.path().join("pca.json");
    ok(&[
        "pca",
        "compute",
        "--shards",
        s(&train),
        "--output",
        s(&stats),
    ]);
    let out = t.path().join("run");
    let train_args = |epochs: &'static str| {
        vec![
            "train",
            "--train",
            s(&train),
            "--val",
            s(&val),
            "--stats",
            s(&stats),
            "--out",
            s(&out),
            "--model",
            "alexnet-tiny",
            "--device",
            "cpu",
            "--batch-size",
            "8",
            "--log-every",
            "2",
            "--epochs",
            epochs,
            "--keep",
            "2",
        ]
    };
    // 32 images, batch 8: 4 steps an epoch, 12 in all, a window every 2 steps.
    let (_, err) = logged(&train_args("3"), &[]);
    let lines = progress_lines(&err);
    let windows: Vec<&&str> = lines.iter().filter(|l| l.contains(": loss ")).collect();
    assert_eq!(windows.len(), 6, "{err}");
    assert!(windows[0].contains("): epoch 1, step 2: loss "), "{err}");
    for w in &windows {
        for part in [", lr ", " images/s, data wait "] {
            assert!(w.contains(part), "{w}");
        }
    }
    let epochs: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(" done at step "))
        .collect();
    assert_eq!(epochs.len(), 3, "{err}");
    assert!(
        epochs[0].contains("train: epoch 1 done at step 4: val top-1 error "),
        "{err}"
    );
    assert!(epochs[2].contains("epoch 3 done at step 12: "), "{err}");
    assert!(epochs[2].contains("%, top-5 error "), "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ten-crop evaluation at step 12 on 8 images: top-1 error ")),
        "{err}"
    );

    // History: the last two epochs, besides last and best.
    let exists = |n: &str| out.join(n).exists();
    assert!(exists("last.safetensors") && exists("best.safetensors"));
    assert!(!exists("epoch-0001.safetensors"), "epoch 1 should be gone");
    assert!(exists("epoch-0002.safetensors") && exists("epoch-0003.safetensors"));
    // A kept epoch is a whole checkpoint: eval reads it.
    let e = ok(&[
        "eval",
        "--checkpoint",
        s(&out.join("epoch-0002.safetensors")),
        "--val",
        s(&val),
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(e.contains("\"step\": 8"), "{e}");

    // TensorBoard: one event file with the scalars (sv-tensorboard's tests read such
    // files with TensorBoard's own reader).
    let events = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("events.out.tfevents."))
            .collect()
    };
    let tb = events(&out.join("tensorboard"));
    assert_eq!(tb.len(), 1);
    let bytes = std::fs::read(&tb[0]).unwrap();
    for tag in [
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "train/data_wait_share",
        "val/top1_err",
        "val/top5_err",
        "eval/ten-crop/top1_err",
    ] {
        assert!(
            bytes.windows(tag.len()).any(|w| w == tag.as_bytes()),
            "no {tag}"
        );
    }

    // Resumed to 4 epochs: history moves on, a second event file starts.
    let mut resume = train_args("4");
    resume.push("--resume");
    ok(&resume);
    assert!(!exists("epoch-0002.safetensors"));
    assert!(exists("epoch-0003.safetensors") && exists("epoch-0004.safetensors"));
    assert_eq!(events(&out.join("tensorboard")).len(), 2);
}

/// Runs `supervision ARGS` with a deadline: a hang is a test failure, not a stuck CI.
fn run_bounded(args: &[&str]) -> std::process::Output {
    use std::time::{Duration, Instant};
    let mut child = supervision()
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
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
    child.wait_with_output().unwrap()
}

#[test]
fn plot_draws_any_finite_value_in_bounded_time() {
    // Issue 26, item 1: a loss of 1e308 overflowed the axis range and plotters' tick
    // search spun forever; lr 5e-324 with images/s 1.7e308 took 24 GB. Every field
    // takes each extreme here, paired with another extreme on the next line.
    let t = tempfile::tempdir().unwrap();
    let max = f64::MAX;
    let pairs = [
        (1e308, 1e308),
        (5e-324, 1.7e308),
        (-1e308, 1e-310),
        (max, -max),
        (0.0, 1e308),
        (1e-300, 1e300),
    ];
    let line = |step: f64, v: f64| {
        serde_json::json!({"kind": "train", "step": step, "loss": v, "top1_err": v, "lr": v,
            "images_per_s": v, "data_wait_share": v})
    };
    let epoch = |step: f64, v: f64| {
        serde_json::json!({"kind": "epoch", "step": step, "train_loss": v,
            "val_top1_err": v, "val_top5_err": v})
    };
    let eval = |step: f64, v: f64| serde_json::json!({"kind": "eval", "step": step, "mode": "ten-crop", "top1_err": v});
    let mut files = Vec::new();
    for (i, &(a, b)) in pairs.iter().enumerate() {
        files.push((
            format!("pair{i}"),
            vec![line(1.0, a), line(2.0, b), epoch(2.0, a), eval(2.0, b)],
        ));
    }
    // Extreme steps: the x axis.
    files.push((
        "steps".into(),
        vec![
            line(5e-324, 1.0),
            line(1e308, 2.0),
            line(-max, 0.5),
            epoch(max, 1.0),
            eval(-1e308, 0.5),
        ],
    ));
    for (name, lines) in &files {
        let metrics = t.path().join(format!("{name}.jsonl"));
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&metrics, text).unwrap();
        let exts: &[&str] = if name == "pair1" {
            &["png", "svg"]
        } else {
            &["png"]
        };
        for ext in exts {
            let out = t.path().join(format!("{name}.{ext}"));
            let o = run_bounded(&["plot", s(&metrics), "--output", s(&out)]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{name}.{ext}: {err}");
            assert!(!err.contains("panicked"), "{err}");
            if *ext == "png" {
                assert_eq!(sv_tests::png_dims(&out), (1400, 900), "{name}");
            }
            // Extreme numbers are written in scientific notation, not 309 digits.
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(stdout.lines().all(|l| l.len() < 200), "{stdout}");
        }
    }
    let svg = std::fs::read_to_string(t.path().join("pair1.svg")).unwrap();
    assert!(
        !svg.contains("00000000000000000000"),
        "a tick of 300 digits"
    );
}

#[test]
fn plot_skips_a_cut_last_line_and_names_a_bad_line_elsewhere() {
    // Issue 26, item 19: a crash leaves the last line cut; `train --resume` drops it,
    // plot refused the whole file.
    let t = tempfile::tempdir().unwrap();
    let metrics = t.path().join("metrics.jsonl");
    metrics_file(&metrics);
    let whole = std::fs::read(&metrics).unwrap();
    let lines = whole.iter().filter(|&&b| b == b'\n').count();
    let out = t.path().join("curves.png");
    for cut in [
        &br#"{"kind":"train","step":26,"lo"#[..],
        // cut inside a multi-byte character
        &b"{\"kind\":\"train\",\"note\":\"\xc3"[..],
    ] {
        let mut bytes = whole.clone();
        bytes.extend_from_slice(cut);
        std::fs::write(&metrics, &bytes).unwrap();
        let o = run_bounded(&["plot", s(&metrics), "--output", s(&out)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        let name = format!("metrics.jsonl:{}", lines + 1);
        assert!(
            err.contains("WARN") && err.contains(&name) && err.contains("cut short"),
            "{err}"
        );
        // The file is read, not repaired: plot writes nothing but the figure.
        assert_eq!(std::fs::read(&metrics).unwrap(), bytes);
    }
    // A bad line that is not the last, or a last line that is whole (it ends in a
    // newline), is an error naming it.
    let mut middle = whole.clone();
    let second = middle.iter().position(|&b| b == b'\n').unwrap() + 1;
    middle.splice(second..second, b"{not json\n".iter().copied());
    let mut last_whole = whole.clone();
    last_whole.extend_from_slice(b"{\"kind\":\n");
    let mut bad_utf8 = whole.clone();
    bad_utf8.splice(second..second, b"\xff\xfe\n".iter().copied());
    for (bytes, line) in [(middle, 2), (last_whole, lines + 1), (bad_utf8, 2)] {
        std::fs::write(&metrics, &bytes).unwrap();
        let o = run_bounded(&["plot", s(&metrics), "--output", s(&out)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("metrics.jsonl:{line}: not a metrics record")),
            "{err}"
        );
    }
}

/// The binary ignores SIGXFSZ itself (issue 26, item 7): under a file-size limit set
/// by a plain shell (`ulimit -f`, which leaves the signal's default action, death), a
/// write past the limit fails with "File too large", the command's clean-up removes
/// its temporary files and the exit code is 1, not a signal death (153).
#[cfg(unix)]
#[test]
fn a_file_size_limit_is_an_error_not_a_signal_death() {
    use std::os::unix::process::ExitStatusExt;
    let t = tempfile::tempdir().unwrap();
    let (root, _) = small_synth(t.path(), 3, &[]);
    let shards = t.path().join("shards");
    let metrics = t.path().join("metrics.jsonl");
    metrics_file(&metrics);
    let figure = t.path().join("curves.png");
    let shards_in = root.join("train");
    let runs: [&[&str]; 2] = [
        &[
            "shard",
            "build",
            "--input",
            s(&shards_in),
            "--output",
            s(&shards),
        ],
        &["plot", s(&metrics), "--output", s(&figure)],
    ];
    for args in runs {
        // 16 blocks of 512 bytes: every shard and figure here is larger.
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -f 16 && exec \"$0\" \"$@\"")
            .arg(sv_tests::binary())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.signal(), None, "{args:?} died by a signal: {err}");
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("File too large"), "{args:?}: {err}");
        let mut left = Vec::new();
        for dir in [t.path(), shards.as_path()] {
            if dir.exists() {
                left.extend(
                    sv_tests::names(dir)
                        .into_iter()
                        .filter(|n| n.contains(".tmp")),
                );
            }
        }
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
    assert!(!figure.exists());
}
