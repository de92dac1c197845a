//! Event files read back by TensorBoard's own reader: the `tensorboard` Python
//! package's `EventAccumulator` (what `tensorboard --logdir` used before its Rust data
//! server, and still the reference), its TFRecord reader (both CRCs checked) and its
//! protobuf classes (our bytes are the canonical serialization of what they parse to).
//!
//! The package comes from the cached virtual environment that `tools/test.sh` sets up;
//! without it the test says so and passes, except under CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use sv_tensorboard::EventWriter;

const READER: &str = r#"
import glob, json, os, sys
from tensorboard.backend.event_processing import event_accumulator, event_file_loader
from tensorboard.compat.proto import event_pb2

logdir = sys.argv[1]
acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.SCALARS: 0})
acc.Reload()
scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
records, canonical, versions, starts = 0, True, [], []
for path in sorted(glob.glob(os.path.join(logdir, "*tfevents*"))):
    for raw in event_file_loader.RawEventFileLoader(path).Load():
        records += 1
        ev = event_pb2.Event.FromString(raw)
        canonical &= ev.SerializeToString() == raw
        if ev.HasField("file_version"):
            versions.append(ev.file_version)
        if ev.HasField("session_log"):
            starts.append([ev.step, ev.session_log.status])
print(json.dumps({"scalars": scalars, "records": records, "canonical": canonical,
                  "versions": versions, "starts": starts}))
"#;

fn cache_dir() -> PathBuf {
    std::env::var_os("SUPERVISION_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/supervision"),
        PathBuf::from,
    )
}

/// A Python that imports `tensorboard`: the torch venv's, SUPERVISION_TORCH_PYTHON's
/// or the one on PATH.
fn python_with_tensorboard() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("SUPERVISION_TORCH_PYTHON") {
        candidates.push(p.into());
    }
    candidates.push(cache_dir().join("venv-torch-2.11.0/bin/python"));
    candidates.push("python3".into());
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import tensorboard"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn read_back(python: &Path, logdir: &Path) -> serde_json::Value {
    let out = Command::new(python)
        .args(["-c", READER])
        .arg(logdir)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the tensorboard reader failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reader output is JSON")
}

#[test]
fn tensorboard_reads_scalars_and_honours_a_restart() {
    let Some(python) = python_with_tensorboard() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no Python with the tensorboard package (tools/test.sh installs it)"
        );
        eprintln!("skipped: no Python with the tensorboard package (tools/test.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("tensorboard");

    // A run that logs steps 1..=10, then dies; its last checkpoint was at step 6.
    let mut first = EventWriter::create(&logdir).unwrap();
    first.session_start(0).unwrap();
    for step in 1..=10i64 {
        let loss = 0.5 * step as f32;
        first
            .scalars(step, &[("train/loss", loss), ("train/lr", 0.01)])
            .unwrap();
        if step % 5 == 0 {
            first
                .scalars(step, &[("val/top1_err", 1.0 / step as f32)])
                .unwrap();
        }
    }
    first.flush().unwrap();
    drop(first);
    // Resumed from step 6: the points it logs replace those from step 6 on.
    let mut resumed = EventWriter::create(&logdir).unwrap();
    resumed.session_start(6).unwrap();
    for step in 7..=8i64 {
        resumed
            .scalars(step, &[("train/loss", 100.0 + step as f32)])
            .unwrap();
    }
    resumed.flush().unwrap();
    drop(resumed);

    let v = read_back(&python, &logdir);
    assert_eq!(v["canonical"], true, "{v}");
    // 2 versions + 2 starts + 10 + 2 validations + 2 resumed.
    assert_eq!(v["records"], 18, "{v}");
    assert_eq!(
        v["versions"],
        serde_json::json!(["brain.Event:2", "brain.Event:2"])
    );
    assert_eq!(v["starts"], serde_json::json!([[0, 1], [6, 1]]));
    let loss: Vec<(i64, f64)> = v["scalars"]["train/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    let mut want: Vec<(i64, f64)> = (1..=5).map(|s| (s, 0.5 * s as f64)).collect();
    want.extend([(7, 107.0), (8, 108.0)]);
    assert_eq!(loss, want);
    // The float32 value survives exactly.
    let lr = v["scalars"]["train/lr"][0][1].as_f64().unwrap();
    assert_eq!(lr, f64::from(0.01f32));
    // Validation at step 10 was orphaned by the restart at 6.
    assert_eq!(
        v["scalars"]["val/top1_err"],
        serde_json::json!([[5, 0.2f32 as f64]])
    );
}
