//! `supervision train` stopped by a signal (issue 26, "a graceful stop"): SIGTERM,
//! SIGINT or SIGUSR1 at a random moment finishes the step, writes a whole
//! `last.safetensors`, exits with status 75, and `--resume` then ends with the same
//! weights and validation figures as a run that was never stopped; a second SIGINT
//! exits at once. CPU, `alexnet-tiny`, 64 images.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sv_core::Split;
use sv_tests::{names, ok, s};

use crate::train::{json, make_set, pca, tensor_bytes, tiny_run};

/// The exit status of a run stopped by a signal (docs/training.md).
const STOPPED: i32 = 75;

/// Starts `supervision ARGS...`, waits until it has started training (its "training
/// alexnet-tiny" line), sends `signals` `pause` apart after `delay`, and returns how it
/// ended with its stderr.
fn signalled(
    args: &[&str],
    delay: Duration,
    signals: &[i32],
    pause: Duration,
) -> (ExitStatus, String) {
    let mut child = sv_tests::supervision()
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut text = String::new();
    while !text.contains("training alexnet-tiny") {
        if err.read_line(&mut text).unwrap() == 0 {
            break;
        }
    }
    std::thread::sleep(delay);
    for (i, &sig) in signals.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        // SAFETY: the child this test started (still there: it is not yet waited for).
        unsafe { libc::kill(pid, sig) };
    }
    let reader = std::thread::spawn(move || {
        err.read_to_string(&mut text).unwrap();
        text
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("train did not end after {signals:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, reader.join().unwrap())
}

/// The validation figures of every epoch record and the final evaluation.
fn figures(out: &Path) -> Vec<(String, u64, String)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(json)
        .filter(|r| r["kind"] != "train")
        .map(|r| {
            let figures = format!(
                "{} {} {} {}",
                r["val_top1_err"], r["val_top5_err"], r["top1_err"], r["top5_err"]
            );
            (
                r["kind"].as_str().unwrap().to_string(),
                r["step"].as_u64().unwrap(),
                figures,
            )
        })
        .collect()
}

/// A few nanoseconds of the clock, mixed: the random moments of this run (printed with
/// any failure, so a failing moment can be tried again).
fn moments(n: usize, up_to_ms: u64) -> Vec<u64> {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % up_to_ms.max(1)
        })
        .collect()
}

#[test]
fn a_signal_stops_after_a_step_and_resume_equals_an_uninterrupted_run() {
    let t = tempfile::tempdir().unwrap();
    let train = make_set(&t.path().join("train"), Split::Train, 4, 16, 1); // 64 images
    let val = make_set(&t.path().join("val"), Split::Val, 4, 4, 2);
    let stats = t.path().join("pca.json");
    pca(&train, &stats, None);
    let run = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "train",
            "--out",
            s(out),
            "--epochs",
            "2",
            "--log-every",
            "3",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(tiny_run(&train, &val, &stats).iter().map(|a| a.to_string()));
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let straight = t.path().join("straight");
    let started = Instant::now();
    let args = run(&straight, &[]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let took = started.elapsed().as_millis() as u64;

    // moments within the first half of a run's length, counted from its first line
    // of training: most land in a step, some in validation or a checkpoint write
    let signals = [libc::SIGTERM, libc::SIGUSR1, libc::SIGINT];
    let at = moments(signals.len(), took / 2);
    let mut stopped = 0;
    for (i, (&sig, &ms)) in signals.iter().zip(&at).enumerate() {
        let out = t.path().join(format!("stopped-{i}"));
        let args = run(&out, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, err) = signalled(&args, Duration::from_millis(ms), &[sig], Duration::ZERO);
        let what = format!("signal {sig} {ms} ms into training (moments {at:?})");
        match status.code() {
            // the run ended before the signal: nothing to resume
            Some(0) => {}
            Some(STOPPED) => {
                stopped += 1;
                assert!(
                    err.contains("stopping after step") && err.contains("--resume"),
                    "{what}: {err}"
                );
                // whole: eval reads it and checks every checksum
                ok(&[
                    "eval",
                    "--checkpoint",
                    s(&out.join("last.safetensors")),
                    "--val",
                    s(&val),
                    "--device",
                    "cpu",
                ]);
                assert!(
                    !names(&out).iter().any(|n| n.ends_with(".tmp")),
                    "{what}: temporaries left: {:?}",
                    names(&out)
                );
                let args = run(&out, &["--resume"]);
                ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
            }
            other => panic!("{what}: exit status {other:?} ({status}): {err}"),
        }
        assert!(
            tensor_bytes(&straight.join("last.safetensors"))
                == tensor_bytes(&out.join("last.safetensors")),
            "{what}: the weights differ from the uninterrupted run's"
        );
        assert_eq!(figures(&out), figures(&straight), "{what}");
    }
    assert!(
        stopped > 0,
        "no run was stopped (moments {at:?} of {took} ms)"
    );
}

#[test]
fn a_second_sigint_exits_at_once() {
    let t = tempfile::tempdir().unwrap();
    let train = make_set(&t.path().join("train"), Split::Train, 4, 16, 1);
    let val = make_set(&t.path().join("val"), Split::Val, 4, 4, 2);
    let stats = t.path().join("pca.json");
    pca(&train, &stats, None);
    let out = t.path().join("run");
    let mut args = vec!["train", "--out", s(&out), "--epochs", "50"];
    let common = tiny_run(&train, &val, &stats);
    args.extend_from_slice(&common);
    let (status, err) = signalled(
        &args,
        Duration::ZERO,
        &[libc::SIGINT, libc::SIGINT],
        Duration::from_millis(1),
    );
    assert_eq!(status.code(), Some(130), "{status}: {err}");
}

/// Issue 26, item 16: a run's own temporary files left by a process that died while
/// writing them are removed when the run continues (its lock says that no writer is
/// alive); other files are left alone, and a folder a live run holds is refused.
#[test]
fn resume_removes_what_a_dead_writer_left_and_a_live_run_keeps_its_folder() {
    let t = tempfile::tempdir().unwrap();
    let train = make_set(&t.path().join("train"), Split::Train, 4, 4, 1);
    let val = make_set(&t.path().join("val"), Split::Val, 4, 1, 2);
    let stats = t.path().join("pca.json");
    pca(&train, &stats, None);
    let out = t.path().join("run");
    let args = |steps: &'static str, resume: bool| {
        let mut a = vec!["train", "--out", s(&out), "--max-steps", steps];
        a.extend_from_slice(&tiny_run(&train, &val, &stats));
        if resume {
            a.push("--resume");
        }
        a.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    run(args("1", false));
    let dead = [
        ".last.safetensors.4194301.0.tmp",
        ".best.safetensors.4194301.2.tmp",
        ".metrics.jsonl.4194301.0.tmp",
        ".epoch-0001.safetensors.4194301.link.tmp",
    ];
    let others = [".notes.txt.1.0.tmp", "last.safetensors.bak"];
    for name in dead.iter().chain(&others) {
        std::fs::write(out.join(name), "left behind").unwrap();
    }
    run(args("2", true));
    let left = names(&out);
    for name in dead {
        assert!(
            !left.iter().any(|n| n == name),
            "{name} is still there: {left:?}"
        );
    }
    for name in others {
        assert!(
            left.iter().any(|n| n == name),
            "{name} was removed: {left:?}"
        );
    }
    assert!(!left.iter().any(|n| n == ".train.lock"), "{left:?}");

    // a live run holds the folder: another one is refused, naming it, and nothing of
    // the live run's is touched
    let lock = std::fs::File::create(out.join(".train.lock")).unwrap();
    std::io::Write::write_all(
        &mut &lock,
        b"pid 4242\nhost elsewhere\ncommand supervision train\n",
    )
    .unwrap();
    // SAFETY: flock on a file this test holds open.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let live = out.join(".last.safetensors.4242.0.tmp");
    std::fs::write(&live, "being written").unwrap();
    let a = args("3", true);
    let err = sv_tests::fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("in use by another training run") && err.contains("pid 4242 on elsewhere"),
        "{err}"
    );
    assert!(live.exists(), "a live writer's file was removed");
}
