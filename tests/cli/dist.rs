//! `supervision train` as a rank of a data-parallel job, on a machine without GPUs:
//! the launchers' environments are read (torchrun, Slurm), a multi-rank request fails
//! at once with a clear message instead of waiting for peers, and a one-rank launch
//! trains as a plain run. (The multi-rank logic itself is tested through the trainer
//! with the thread test double, in sv-dist's tests.)

use std::process::Output;
use std::time::{Duration, Instant};

use sv_tests::{fails, ok, s, supervision};

/// Whether an NVIDIA driver is present (these tests are about machines without one).
fn has_gpu() -> bool {
    std::path::Path::new("/dev/nvidiactl").exists()
}

/// `supervision ARGS` with extra environment variables; returns the output and the
/// time it took.
fn run_env(vars: &[(&str, &str)], args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = supervision()
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .expect("spawn supervision");
    (out, t.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tiny synthetic-data run (no shards needed) with `extra` flags.
fn tiny<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        "--synthetic-data",
        "1",
        "--model",
        "alexnet-tiny",
        "--batch-size",
        "2",
        "--synthetic-classes",
        "3",
        "--out",
        out,
        "--rendezvous-timeout",
        "5",
    ];
    v.extend_from_slice(extra);
    v
}

const TORCHRUN_RANK1: &[(&str, &str)] = &[
    ("RANK", "1"),
    ("WORLD_SIZE", "2"),
    ("LOCAL_RANK", "1"),
    ("LOCAL_WORLD_SIZE", "2"),
    ("MASTER_ADDR", "127.0.0.1"),
    ("MASTER_PORT", "29517"),
];

const SRUN_TASK0: &[(&str, &str)] = &[
    ("SLURM_PROCID", "0"),
    ("SLURM_NTASKS", "4"),
    ("SLURM_LOCALID", "0"),
    ("SLURM_JOB_NODELIST", "gpu[07-08]"),
    ("SLURM_JOB_ID", "4242"),
];

#[test]
fn multi_rank_requests_without_gpus_fail_at_once_in_words() {
    if has_gpu() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = s(t.path());
    // --nproc-per-node: refused before any rank starts.
    let (o, took) = run_env(&[], &tiny(out, &["--nproc-per-node", "2"]));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("--nproc-per-node 2 starts one rank per GPU")
            && e.contains("NCCL")
            && e.contains("libtorch sees 0 CUDA device(s)"),
        "{e}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    // A torchrun rank and a Slurm task: refused before the rendezvous.
    for (vars, needle) in [
        (TORCHRUN_RANK1, "rank 1 (local rank 1) sees no CUDA device"),
        (SRUN_TASK0, "rank 0 (local rank 0) sees no CUDA device"),
    ] {
        let (o, took) = run_env(vars, &tiny(out, &[]));
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(needle) && e.contains("NCCL"), "{e}");
        assert!(took < Duration::from_secs(30), "{took:?}");
    }
    // NCCL asked for a single rank: the same.
    let e = fails(&tiny(out, &["--collective", "nccl"]));
    assert!(e.contains("sees no CUDA device"), "{e}");
    // Nothing was written by the refused runs.
    assert!(std::fs::read_dir(t.path()).unwrap().next().is_none());
}

#[test]
fn launcher_flags_and_variables_are_checked_in_words() {
    let t = tempfile::tempdir().unwrap();
    let out = s(t.path());
    let mut bad_rank = TORCHRUN_RANK1.to_vec();
    bad_rank[0] = ("RANK", "one");
    let (o, _) = run_env(&bad_rank, &tiny(out, &[]));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("RANK=\"one\": not a non-negative integer"),
        "{e}"
    );
    let mut bad_list = SRUN_TASK0.to_vec();
    bad_list[3] = ("SLURM_JOB_NODELIST", "gpu[08-07]");
    let (o, _) = run_env(&bad_list, &tiny(out, &[]));
    let e = stderr(&o);
    assert!(
        e.contains("SLURM_JOB_NODELIST") && e.contains("backwards"),
        "{e}"
    );
    // --nproc-per-node under a launcher, --device with a rank, unknown --collective,
    // a count of 0.
    let (o, _) = run_env(TORCHRUN_RANK1, &tiny(out, &["--nproc-per-node", "2"]));
    let e = stderr(&o);
    assert!(
        e.contains("torchrun already started this process as rank 1 of 2"),
        "{e}"
    );
    let (o, _) = run_env(TORCHRUN_RANK1, &tiny(out, &["--device", "cpu"]));
    let e = stderr(&o);
    assert!(
        e.contains("--device cpu: rank 1") && e.contains("leave --device at auto"),
        "{e}"
    );
    let e = fails(&tiny(out, &["--collective", "gloo"]));
    assert!(
        e.contains("'gloo' for '--collective") && e.contains("[possible values: auto, nccl]"),
        "{e}"
    );
    let e = fails(&tiny(out, &["--nproc-per-node", "0"]));
    assert!(e.contains("must be at least 1"), "{e}");
    let e = fails(&tiny(out, &["--nproc-per-node", "2", "--device", "cpu"]));
    assert!(e.contains("--device cpu cannot be used with it"), "{e}");
}

#[test]
fn a_one_rank_launch_is_a_plain_run_and_help_says_what_batch_means() {
    let t = tempfile::tempdir().unwrap();
    let one = [
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29518"),
    ];
    let args = tiny(s(t.path()), &["--device", "cpu", "--json"]);
    let (o, _) = run_env(&one, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["world_size"].as_u64(), v["collective"].as_str()),
        (Some(1), Some("none"))
    );
    // --nproc-per-node 1 is one process too
    ok(&tiny(
        s(t.path()),
        &["--device", "cpu", "--nproc-per-node", "1"],
    ));
    let help = ok(&["train", "--help"]);
    assert!(help.contains("Images per step on each rank"), "{help}");
    assert!(help.contains("global batch of N x this"), "{help}");
    for flag in [
        "--nproc-per-node",
        "--collective",
        "--rendezvous-timeout",
        "--heartbeat-timeout",
        "--stall-timeout",
    ] {
        assert!(help.contains(flag), "{flag} in --help");
    }
}

/// Issue 26, item 6: a launcher's variable is checked as a flag is, limits included:
/// an absurd job size is refused naming the variable and the limit, before anything is
/// written or any rendezvous is tried.
#[test]
fn launcher_variables_beyond_their_limits_are_refused_in_words() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    for (var, value) in [
        ("WORLD_SIZE", "100000000"),
        ("WORLD_SIZE", "18446744073709551615"),
        ("SLURM_NTASKS", "100000000"),
    ] {
        let mut vars = if var == "WORLD_SIZE" {
            TORCHRUN_RANK1.to_vec()
        } else {
            SRUN_TASK0.to_vec()
        };
        for v in &mut vars {
            if v.0 == var {
                v.1 = value;
            }
        }
        let (o, took) = run_env(&vars, &tiny(s(&out), &[]));
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{var}={value}: {e}");
        assert!(
            e.contains(&format!("{var}={value}: must be at most 65536")),
            "{var}={value}: {e}"
        );
        assert!(took < Duration::from_secs(30), "{took:?}");
        assert!(!out.exists(), "{var}={value}: wrote {}", out.display());
    }
}
