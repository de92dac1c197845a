#!/usr/bin/env python3
"""supervision.Loader (the Python package, crates/sv-py) against `supervision bench
pipeline` on the same shards, and against the usual PyTorch loaders on the same
images, interleaved in rounds on the same cores.

Sides (batch 128, workers = cores, random 227 crop + flip):
  python raw u8     supervision.Loader, raw records, uint8 NHWC (no lighting)
  python jpeg u8    the same over the jpeg records
  python raw f32    raw records, float32 NCHW with PCA lighting (fb.resnet.torch's
                    constants) and ImageNet mean/std applied on the CPU
  rust raw u8, rust jpeg u8, rust raw f32
                    `supervision bench pipeline --no-digest` with the same settings
                    (its f32 default is the same lighting and normalisation)
  torchvision       peer (a) of tools/bench/peers.py: ImageFolder over 256px JPEG
                    files, RandomCrop + RandomHorizontalFlip + ToTensor + Normalize,
                    DataLoader(num_workers = cores)
  numpy memmap      peer (b): DataLoader over np.memmap of the raw shard, numpy
                    crop + flip, uint8 NHWC
  dali our jpeg     peer (d): DALI's CPU pipeline on the jpeg shard's own payloads
                    written out as files (the bytes python/rust jpeg decode), float32
                    CHW normalised; left out, with the reason, without DALI
The Python loop pulls each batch and drops it, as `bench pipeline --no-digest`
does. A Python loader runs epoch after epoch (each `for` loop is one epoch, its
pipeline started afresh), so epoch boundaries inside the timed batches count
against it; `bench pipeline` streams epochs without a break.

Every side runs --warmup batches, then --batches timed ones; images/s = timed
images / timed seconds. Each of --rounds rounds runs every side once; the report
gives each side's median and range and, per pair, the median (and range) of the
ratios taken within a round.

Data and venv: those of tools/bench/peers.py (${SUPERVISION_CACHE}/bench-peers-<images>
and venv-peers); --wheel installs the supervision wheel (maturin build --release) into
that venv first.

Usage:
  cargo build --release -p sv-cli
  maturin build --release -m crates/sv-py/Cargo.toml --out target/wheels
  tools/bench/python_loader.py --wheel target/wheels/supervision_pipeline-*.whl \
      [--images 2000] [--batches 30] [--warmup 3] [--rounds 3] [--json FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (the shared data, venv and peer loaders)


def python_side(shards, output, workers, batches, warmup):
    import supervision

    kw = {}
    if output == "float32":
        kw = {"lighting": "imagenet", "mean": "imagenet"}
    loader = supervision.Loader(shards, peers.BATCH, crop=peers.CROP, workers=workers,
                                output=output, **kw)

    def it():
        while True:
            for images, labels in loader:
                yield images.shape[0]

    return peers.timed(batches, warmup, it())


def rust_side(binary, shards, output, workers, batches, warmup):
    return peers.ours(binary, shards, output, workers, batches, warmup)["images_per_s"]


def one_round(a, raw, jpeg, jdir, notes):
    w, n, wu = a.workers, a.batches, a.warmup
    res = {}
    res["python raw u8"] = python_side(raw, "uint8", w, n, wu)
    res["rust raw u8"] = rust_side(a.binary, raw, "u8", w, n, wu)
    res["python jpeg u8"] = python_side(jpeg, "uint8", w, n, wu)
    res["rust jpeg u8"] = rust_side(a.binary, jpeg, "u8", w, n, wu)
    res["python raw f32"] = python_side(raw, "float32", w, n, wu)
    res["rust raw f32"] = rust_side(a.binary, raw, "f32", w, n, wu)
    res["torchvision"] = peers.peer_a(jdir, w, n, wu)
    res["numpy memmap"] = peers.peer_b(raw, w, n, wu)
    v, why = peers.peer_c(peers.payload_files(jpeg), w, n, wu)
    if v is not None:
        res["dali our jpeg"] = v
    elif why not in notes:
        notes.append(why)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--subsampling", default="4:2:0")
    ap.add_argument("--binary", default=os.path.join(peers.ROOT, "target", "release", "supervision"))
    ap.add_argument("--wheel", help="install this supervision wheel into the venv first")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    peers.ensure_venv()
    if a.wheel:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--force-reinstall", a.wheel], check=True)
    raw, jpeg, jdir = peers.make_data(a.binary, a.images, a.subsampling)[:3]
    rounds = []
    notes = []
    for r in range(a.rounds):
        res = one_round(a, raw, jpeg, jdir, notes)
        rounds.append(res)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in res.items()),
              file=sys.stderr, flush=True)
    names = list(rounds[0])
    print(f"{a.rounds} rounds, {a.batches} timed batches of {peers.BATCH} (after {a.warmup}), "
          f"{a.workers} workers, {a.images} images")
    print(f"{'side':<16} {'median img/s':>12}   range")
    table = {}
    for k in names:
        v = [r[k] for r in rounds]
        table[k] = {"median": statistics.median(v), "min": min(v), "max": max(v)}
        print(f"{k:<16} {statistics.median(v):>12.0f}   {min(v):.0f}-{max(v):.0f}")
    pairs = [("python raw u8", "rust raw u8"), ("python jpeg u8", "rust jpeg u8"),
             ("python raw f32", "rust raw f32"), ("python raw u8", "torchvision"),
             ("python raw u8", "numpy memmap"), ("python jpeg u8", "torchvision"),
             ("python jpeg u8", "dali our jpeg")]
    for note in notes:
        print(f"note: {note}")
    ratios = {}
    for x, y in pairs:
        if y not in rounds[0]:
            continue
        v = [r[x] / r[y] for r in rounds]
        ratios[f"{x} / {y}"] = {"median": statistics.median(v), "min": min(v), "max": max(v)}
        print(f"{x} / {y}: {statistics.median(v):.2f}x ({min(v):.2f}-{max(v):.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rounds": rounds, "table": table, "ratios": ratios,
                       "args": vars(a), "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                      f, indent=2)


if __name__ == "__main__":
    main()
