"""Errors are Python exceptions naming the file (and record); bad arguments are
ValueErrors; nothing hangs or crashes the interpreter: an early break, Ctrl-C and
fork each end cleanly (in a child interpreter, under a timeout)."""

import json
import shutil

import numpy as np
import pytest

import supervision
from conftest import CROP, SIDE, run_python


def damaged_copy(src, dst, offset_in_record=100, record=5):
    """A copy of the raw dataset `src` with one byte of `record` flipped in its shard
    (raw records lie at 4096 + i * side * side * 3); returns (dir, shard file)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    shard = dst / manifest["shards"][0]["name"]
    raw = bytearray(shard.read_bytes())
    raw[4096 + record * SIDE * SIDE * 3 + offset_in_record] ^= 0x40
    shard.write_bytes(bytes(raw))
    return dst, shard


def test_missing_paths_raise_file_not_found(tmp_path, data):
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(FileNotFoundError, match="no-such-dataset"):
        supervision.Dataset(missing)
    with pytest.raises(FileNotFoundError, match="no-such-dataset"):
        supervision.Loader(missing, 4)
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        supervision.Loader(data["raw"], 4, crop=CROP, lighting=tmp_path / "nothing.json")
    with pytest.raises(FileNotFoundError, match="no-such-dataset"):
        supervision.compute_stats(missing, tmp_path / "s.json")
    with pytest.raises(FileNotFoundError, match="no-images"):
        supervision.build_shards(tmp_path / "no-images", tmp_path / "out")
    # a shard the manifest lists that is gone
    copy = tmp_path / "copy"
    shutil.copytree(data["raw"], copy)
    shard = json.loads((copy / "manifest.json").read_text())["shards"][0]["name"]
    (copy / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        supervision.Dataset(copy)


def test_a_flipped_byte_raises_shard_error_naming_the_file(tmp_path, data):
    assert issubclass(supervision.ShardError, OSError)
    path, shard = damaged_copy(data["raw"], tmp_path / "bad")
    ds = supervision.Dataset(path)  # the header and index still hold
    ds[4]
    with pytest.raises(supervision.ShardError, match=rf"{shard.name}.*record 5.*checksum"):
        ds[5]
    with pytest.raises(supervision.ShardError, match=shard.name):
        ds.verify()
    loader = supervision.Loader(path, 4, crop=CROP, train=False, verify=True)
    with pytest.raises(supervision.ShardError, match=rf"{shard.name}.*record 5"):
        for _ in loader:
            pass
    # skip_damaged leaves the record out instead
    skipping = supervision.Loader(path, 4, crop=CROP, train=False, verify=True,
                                  skip_damaged=True, with_info=True)
    seen = np.concatenate([info["indices"] for _, _, info in skipping])
    assert 5 not in seen.tolist() and len(seen) == len(ds) - 1
    # damage in a shard's header is found on opening
    raw = bytearray(shard.read_bytes())
    raw[20] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(supervision.ShardError, match=shard.name):
        supervision.Dataset(path)
    with pytest.raises(supervision.ShardError, match=shard.name):
        supervision.Loader(path, 4)


def test_a_damaged_jpeg_record_raises_shard_error(tmp_path, data):
    copy = tmp_path / "jpeg"
    shutil.copytree(data["jpeg"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = copy / manifest["shards"][0]["name"]
    raw = bytearray(shard.read_bytes())
    raw[4096 + 200] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(supervision.ShardError, match=shard.name):
        supervision.Dataset(copy)[0]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"crop": SIDE + 1}, "crop"),
        ({"output": "int8"}, "output"),
        ({"layout": "CHWN"}, "layout"),
        ({"output": "float32", "layout": "NHWC"}, "NCHW"),
        ({"rank": 3, "world_size": 3}, "rank 3"),
        ({"workers": 0}, "workers"),
        ({"mean": "channel"}, "float32"),
        ({"output": "float32", "mean": "channel"}, "statistics file"),
        ({"output": "float32", "mean": "median"}, "mean"),
        ({"lighting": 7}, "lighting"),
        ({"lighting_convention": "other"}, "lighting_convention"),
        ({"alpha": -1.0}, "alpha"),
        ({"ten_crop": True}, "train=False"),
        ({"batch_size": 10_000}, "full batch"),
    ],
)
def test_wrong_arguments_raise_value_error(data, kwargs, words):
    args = {"batch_size": 4, "crop": CROP, **kwargs}
    batch_size = args.pop("batch_size")
    with pytest.raises(ValueError, match=words):
        supervision.Loader(data["raw"], batch_size, **args)


def test_wrong_arguments_of_the_functions(tmp_path, data):
    with pytest.raises(ValueError, match="codec"):
        supervision.build_shards(data["root"] / "synth" / "train", tmp_path / "o", codec="png")
    with pytest.raises(ValueError, match="part"):
        supervision.build_shards(data["root"] / "synth" / "train", tmp_path / "o", part="3/2")
    with pytest.raises(ValueError, match="sample"):
        supervision.compute_stats(data["raw"], tmp_path / "s.json", sample=0)
    with pytest.raises(ValueError, match="two files"):
        supervision.compute_stats(data["raw"], tmp_path / "s.json", mean_image=tmp_path / "s.json")
    with pytest.raises(IndexError, match="out of range"):
        supervision.Dataset(data["raw"])[10_000]
    with pytest.raises(ValueError, match="not a valid statistics file"):
        bad = tmp_path / "bad.json"
        bad.write_text("{}")
        supervision.Loader(data["raw"], 4, crop=CROP, lighting=bad)


def test_early_break_and_drop_stop_the_threads(data):
    code = f"""
import threading, gc, numpy, supervision
base = threading.active_count()
def threads():
    import os
    return len(os.listdir("/proc/self/task"))
before = threads()
loader = supervision.Loader({str(data['jpeg'])!r}, 4, crop={CROP}, workers=3)
for epoch in range(20):
    for i, (images, labels) in enumerate(loader):
        if i == 1:
            break
    gc.collect()
    assert threads() == before, (epoch, threads(), before)
it = iter(loader)
next(it)
assert threads() > before
del it
gc.collect()
assert threads() == before, (threads(), before)
del loader
print("ok")
"""
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_keyboard_interrupt_ends_the_loop(data):
    code = f"""
import os, signal, threading, time, supervision
loader = supervision.Loader({str(data['jpeg'])!r}, 16, crop={CROP}, workers=1,
                            train=False, ten_crop=True, output="float32", mean="imagenet",
                            drop_last=False)
threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
t0 = time.monotonic()
try:
    while True:
        for images, labels in loader:
            pass
except KeyboardInterrupt:
    print("interrupted")
"""
    proc = run_python(code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "interrupted"


def test_after_fork_it_works_or_raises_never_hangs(data):
    code = f"""
import gc, os, sys, supervision
loader = supervision.Loader({str(data['raw'])!r}, 4, crop={CROP}, workers=2)
it = iter(loader)
images, labels = next(it)
pid = os.fork()
if pid == 0:
    code = 0
    try:
        next(it)
        code = 3
    except RuntimeError as e:
        if "fork" not in str(e):
            code = 4
    # the parent's batch and iterator are abandoned, not shut down
    del images, it
    gc.collect()
    # a fresh iteration in the child starts the child's own pipeline
    n = sum(1 for _ in loader)
    if n != len(loader):
        code = 5
    ds = supervision.Dataset({str(data['raw'])!r})
    ds[0]
    os._exit(code)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
next(it)
print("parent ok")
"""
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["child 0", "parent ok"], proc.stdout + proc.stderr
