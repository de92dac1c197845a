"""Shared test data for the `supervision` package: a small synthetic ImageNet
look-alike (`supervision synth`), built into raw and JPEG shard datasets with the
package's own build_shards, and statistics from its compute_stats; made once per
session. The `supervision` binary (for synth and `bench pipeline`) is
$SUPERVISION_BIN, else target/debug/supervision of this repository."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import supervision

REPO = Path(__file__).resolve().parents[3]
SIDE = 48
CROP = 40


def supervision_bin():
    path = os.environ.get("SUPERVISION_BIN") or str(REPO / "target" / "debug" / "supervision")
    if not Path(path).is_file():
        pytest.fail(
            f"the supervision binary is not at {path}: build it (cargo build -p sv-cli --bin "
            "supervision) or set SUPERVISION_BIN"
        )
    return path


def run_cli(*args):
    """Run the supervision binary; return its stdout, failing the test on an error."""
    proc = subprocess.run(
        [supervision_bin(), *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        pytest.fail(f"supervision {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc.stdout


def run_python(code, *, env=None, timeout=120):
    """Run `code` in a fresh interpreter (for hangs, signals and fork): returns the
    CompletedProcess; a hang fails the test through the timeout."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        return subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the child interpreter hung (no exit in {timeout} s):\n{e.stdout}\n{e.stderr}")


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """{"raw", "jpeg", "val", "stats", "mean_image"}: paths of the session's data."""
    root = tmp_path_factory.mktemp("svpy")
    run_cli(
        "synth", "--output", root / "synth", "--classes", "3", "--per-class", "14",
        "--val-per-class", "3", "--min-side", "40", "--max-side", "90", "--seed", "7",
    )
    raw = root / "raw"
    jpeg = root / "jpeg"
    val = root / "val"
    supervision.build_shards(root / "synth" / "train", raw, size=SIDE, workers=2)
    supervision.build_shards(
        root / "synth" / "train", jpeg, size=SIDE, codec="jpeg", workers=2, max_shard_mib=1
    )
    supervision.build_shards(
        root / "synth" / "val", val, split="val", size=SIDE, classes_from=raw, workers=2
    )
    stats = root / "stats.json"
    mean = root / "mean.npy"
    supervision.compute_stats(raw, stats, mean_image=mean, workers=2)
    return {"root": root, "raw": raw, "jpeg": jpeg, "val": val, "stats": stats, "mean_image": mean}
