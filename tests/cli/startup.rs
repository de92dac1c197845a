//! The two executables: `supervision` starts without libtorch (`model` included) and
//! hands the libtorch commands to `supervision-torch`; a closed standard output is a
//! quiet exit.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use sv_tests::{binary, fails, ok, s, supervision};

/// Runs `cmd` to its end and returns (exit code, peak resident set in KiB), from
/// `wait4` on that one child (other tests' children do not count).
fn run_with_rusage(cmd: &mut Command) -> (i32, i64) {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for the child we spawned and own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child); // already reaped
    assert!(libc::WIFEXITED(status), "child did not exit normally");
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

/// The environment variable that turns [`rss_probe`] on: the binary to run, then its
/// arguments, separated by newlines.
const PROBE: &str = "SV_RSS_PROBE";

/// Peak resident set of `supervision ARGS` in KiB, with its exit code.
///
/// Not measured from this process: Linux charges a process that exec'd after a vfork
/// (how Rust spawns) with the high-water mark of the memory it was spawned from, so a
/// test process that grew past 100 MB running other tests would be counted. This test
/// binary is started again, fresh and small, and it runs the command and reports.
fn peak_rss(args: &[&str]) -> (i32, i64) {
    let mut spec = vec![s(binary()).to_string()];
    spec.extend(args.iter().map(|a| a.to_string()));
    let out = Command::new(std::env::current_exe().expect("test executable"))
        .args([
            "startup::rss_probe",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(PROBE, spec.join("\n"))
        .env_remove("RUST_LOG")
        .output()
        .expect("spawn the probe");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        // the harness prints `test startup::rss_probe ... ` before the test's output
        .find_map(|l| l.split_once("rss-probe ").map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no probe line: {out:?}"));
    let mut f = line
        .split_whitespace()
        .map(|v| v.parse::<i64>().expect("probe number"));
    let (code, kib) = (f.next().unwrap(), f.next().unwrap());
    (code as i32, kib)
}

/// Not a test of its own: when [`PROBE`] is set this process is [`peak_rss`]'s fresh
/// probe; otherwise it does nothing.
#[test]
fn rss_probe() {
    let Ok(spec) = std::env::var(PROBE) else {
        return;
    };
    let mut parts = spec.split('\n');
    let mut cmd = Command::new(parts.next().expect("binary"));
    cmd.args(parts);
    let (code, kib) = run_with_rusage(&mut cmd);
    println!("rss-probe {code} {kib}");
}

#[test]
fn data_commands_do_not_load_libtorch() {
    for args in [&["--version"][..], &["model", "summary", "alexnet"][..]] {
        let (code, kib) = peak_rss(args);
        assert_eq!(code, 0, "{args:?}");
        assert!(
            kib < 100 * 1024,
            "`supervision {args:?}` peaked at {} MiB; libtorch loaded?",
            kib / 1024
        );
    }
    // The dynamic loader's own account of what it opened (glibc).
    for args in [&["shard", "--help"][..], &["model", "list"][..]] {
        let out = supervision()
            .args(args)
            .env("LD_DEBUG", "files")
            .output()
            .expect("spawn");
        assert!(out.status.success(), "{args:?}");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            !log.contains("libtorch") && !log.contains("libc10"),
            "supervision {args:?} opened libtorch:\n{log}"
        );
    }
}

#[test]
fn model_summary_counts_parameters() {
    let json = |text: String| -> serde_json::Value { serde_json::from_str(&text).expect("JSON") };
    let v = json(ok(&["model", "summary", "alexnet", "--json"]));
    assert_eq!(v["total_params"], 60_965_224);
    assert_eq!(v["rows"][0]["output"], serde_json::json!([96, 55, 55]));
    let v = json(ok(&["model", "summary", "alexnet-owt", "--json"]));
    assert_eq!(v["total_params"], 61_100_840);
    let table = ok(&["model", "summary", "alexnet"]);
    assert!(table.contains("60,965,224"), "{table}");
    assert!(table.contains("groups 2"), "{table}");
    let err = fails(&["model", "summary", "vgg16"]);
    assert!(err.contains("vgg16"), "{err}");
    // The help and the error name the models from the same list `model list` prints.
    let help = ok(&["model", "summary", "--help"]);
    for name in ok(&["model", "list"]).lines() {
        assert!(help.contains(name), "{name} missing from:\n{help}");
        assert!(err.contains(name), "{name} missing from:\n{err}");
    }
}

#[cfg(feature = "train")]
#[test]
fn torch_commands_run_through_supervision_torch() {
    // --help reaches the libtorch binary, which knows train's options; usage names the
    // command the user typed.
    for args in [&["train", "--help"][..], &["help", "train"][..]] {
        let out = supervision().args(args).output().expect("spawn");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(text.contains("--batch-size"), "{args:?}:\n{text}");
        assert!(text.contains("supervision train"), "{args:?}:\n{text}");
    }
    let out = supervision()
        .args(["predict", "--help"])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--checkpoint"));
    // Exit codes pass through: a bad flag is clap's usage error (2).
    let out = supervision()
        .args(["eval", "--no-such-flag"])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn supervision_alone_names_the_missing_torch_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lone = dir.path().join("supervision");
    std::fs::copy(binary(), &lone).expect("copy binary");
    let run = |args: &[&str]| {
        Command::new(&lone)
            .args(args)
            .env_remove("SUPERVISION_TORCH")
            .env("PATH", dir.path())
            .output()
            .expect("spawn")
    };
    assert!(run(&["shard", "--help"]).status.success());
    // `model` describes the models without libtorch: no supervision-torch needed.
    let out = run(&["model", "list"]);
    assert!(out.status.success(), "{out:?}");
    let list = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        ["alexnet", "alexnet-owt", "alexnet-tiny", "alexnet-owt-tiny"]
    );
    let out = run(&["model", "summary", "alexnet"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("total parameters: 60,965,224"));
    let out = run(&["train", "--help"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("supervision-torch") && err.contains("cargo build"),
        "{err}"
    );
    // A wrong SUPERVISION_TORCH is named, not ignored.
    let out = Command::new(&lone)
        .args(["eval", "--help"])
        .env("SUPERVISION_TORCH", dir.path().join("nowhere"))
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
}

/// A pipe whose reading end is already closed: every write to it fails with EPIPE,
/// whatever the timing.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two new descriptors, which we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe {
        drop(OwnedFd::from_raw_fd(fds[0]));
        Stdio::from(File::from_raw_fd(fds[1]))
    }
}

fn assert_quiet_exit(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(out.status.code(), Some(0), "{what}: {err}");
}

#[test]
fn closed_stdout_is_a_quiet_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("synth");
    let args = [
        "synth",
        "--output",
        s(&out),
        "--classes",
        "1",
        "--per-class",
        "1",
        "--val-per-class",
        "1",
        "--min-side",
        "32",
        "--max-side",
        "40",
    ];
    assert_quiet_exit(supervision().args(args), "synth");
    assert!(Path::new(&out).join("train").is_dir(), "synth still ran");
    assert_quiet_exit(supervision().args(["model", "list"]), "model list");
    if cfg!(feature = "train") {
        assert_quiet_exit(supervision().args(["train", "--help"]), "train --help");
    }
}

/// Runs `cmd` with a deadline: an exec loop or a hang is a test failure, not a stuck
/// CI. Returns (exit code, stderr).
fn bounded(cmd: &mut Command, what: &str) -> (Option<i32>, String) {
    use std::time::{Duration, Instant};
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().expect("kill");
            panic!("{what}: still running after 20 s (an exec loop?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{what}: {err}");
    (out.status.code(), err)
}

#[cfg(unix)]
#[test]
fn a_torch_binary_that_is_supervision_itself_is_refused() {
    // Issue 26, item 4: each of these re-executed `supervision train` forever.
    let dir = tempfile::tempdir().expect("tempdir");
    let front = dir.path().join("supervision");
    std::fs::copy(binary(), &front).expect("copy binary");
    let torch = dir.path().join("supervision-torch");
    let run = |env_torch: Option<&Path>| {
        let mut cmd = Command::new(&front);
        cmd.args(["train", "--help"])
            .env_remove("SUPERVISION_TORCH")
            .env_remove("SUPERVISION_FORWARDED_BY")
            .env("PATH", dir.path());
        if let Some(p) = env_torch {
            cmd.env("SUPERVISION_TORCH", p);
        }
        cmd
    };
    let refused = |cmd: &mut Command, what: &str| {
        let (code, err) = bounded(cmd, what);
        assert_eq!(code, Some(1), "{what}: {err}");
        assert!(
            err.contains("supervision-torch") && err.contains("SUPERVISION_TORCH"),
            "{what}: {err}"
        );
        err
    };
    // SUPERVISION_TORCH naming `supervision`, directly and through a relative path.
    let err = refused(&mut run(Some(&front)), "SUPERVISION_TORCH=supervision");
    assert!(err.contains("start itself forever"), "{err}");
    let mut cmd = run(Some(Path::new("./supervision")));
    cmd.current_dir(dir.path());
    refused(&mut cmd, "SUPERVISION_TORCH=./supervision");
    // supervision-torch beside it as a symbolic link, a hard link, a copy, and
    // scripts that run supervision (with and without exec).
    std::os::unix::fs::symlink(&front, &torch).expect("symlink");
    refused(&mut run(None), "symlink");
    std::fs::remove_file(&torch).unwrap();
    std::fs::hard_link(&front, &torch).expect("hard link");
    refused(&mut run(None), "hard link");
    std::fs::remove_file(&torch).unwrap();
    std::fs::copy(&front, &torch).expect("copy");
    let err = refused(&mut run(None), "copy");
    assert!(err.contains("ran `supervision` again"), "{err}");
    for script in [
        format!("#!/bin/sh\nexec '{}' \"$@\"\n", front.display()),
        format!("#!/bin/sh\n'{}' \"$@\"\n", front.display()),
    ] {
        std::fs::remove_file(&torch).unwrap();
        std::fs::write(&torch, &script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&torch, std::fs::Permissions::from_mode(0o755)).unwrap();
        refused(&mut run(None), &script);
    }
}

#[test]
fn environment_variables_are_checked_like_flags() {
    // Issue 26, item 6: SUPERVISION_PROGRESS_SECS=1e20 panicked in
    // Duration::from_secs_f64; other bad values were silently ignored.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("synth");
    let synth = [
        "synth",
        "--output",
        s(&out),
        "--classes",
        "1",
        "--per-class",
        "1",
        "--val-per-class",
        "0",
        "--min-side",
        "32",
        "--max-side",
        "40",
    ];
    for (var, value, want) in [
        ("SUPERVISION_PROGRESS_SECS", "1e20", "must be at most 86400"),
        (
            "SUPERVISION_PROGRESS_SECS",
            "86401",
            "must be at most 86400",
        ),
        ("SUPERVISION_PROGRESS_SECS", "-1", "from 0 to 86400"),
        ("SUPERVISION_PROGRESS_SECS", "NaN", "from 0 to 86400"),
        (
            "SUPERVISION_PROGRESS_SECS",
            "soon",
            "not a number of seconds",
        ),
        ("SUPERVISION_TORCH", "", "set but empty"),
        ("RUST_LOG", "sv_build=lots", "not a log filter"),
    ] {
        let (code, err) = bounded(supervision().args(synth).env(var, value), var);
        assert_eq!(code, Some(2), "{var}={value}: {err}");
        assert!(
            err.contains(&format!("{var}={value:?}")) || err.contains(var),
            "{var}={value}: {err}"
        );
        assert!(err.contains(want), "{var}={value}: {err}");
        assert!(!out.exists(), "{var}={value}: the command ran");
    }
    // Good values still work.
    let (code, err) = bounded(
        supervision()
            .args(synth)
            .env("SUPERVISION_PROGRESS_SECS", "0.5")
            .env("RUST_LOG", "warn"),
        "good values",
    );
    assert_eq!(code, Some(0), "{err}");
}
