#!/usr/bin/env python3
"""What checking every training record's CRC-32 costs, next to a training step.

`supervision train` checks each record's CRC as its worker reads it (`--no-verify`
turns it off). This runs, in one invocation on the same shards and cores:

1. `supervision bench pipeline` with and without `--verify` (the same loader train
   uses, uint8 crops of --crop), best of --repeat each: images/s, and the CPU time
   of the verify stage per image (summed over workers);
2. `supervision train --synthetic-data` with --model on --device: the compute-only
   rate of training steps, in images/s.

It prints the verify time per image, the pipeline rates with and without it, and
what share of one training step's time per image the check adds to the workers'
CPU time (verify seconds per image x training images per second).

Without --shards, a dataset of --images synthetic images (256x256, raw) is made once
with `supervision synth` and `shard build` under
${SUPERVISION_CACHE:-~/.cache/supervision}/bench-verify-<images>.

Usage:
  cargo build --release -p sv-cli
  tools/bench/verify.py [--images 512] [--shards DIR] [--workers 2] [--repeat 3]
                        [--model alexnet] [--batch-size 128] [--device auto]
                        [--steps 5] [--binary target/release/supervision]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return out.stdout


def dataset(binary, images):
    cache = os.environ.get("SUPERVISION_CACHE", os.path.expanduser("~/.cache/supervision"))
    shards = os.path.join(cache, f"bench-verify-{images}")
    if os.path.exists(os.path.join(shards, "manifest.json")):
        return shards
    per_class = max(1, images // 8)
    with tempfile.TemporaryDirectory() as tmp:
        run([binary, "synth", "--output", tmp + "/synth", "--classes", "8",
             "--per-class", str(per_class), "--val-per-class", "1",
             "--min-side", "260", "--max-side", "400"])
        run([binary, "shard", "build", "--input", tmp + "/synth/train", "--output", shards])
    return shards


def pipeline(binary, shards, args, verify):
    best = None
    for _ in range(args.repeat):
        cmd = [binary, "bench", "pipeline", "--shards", shards, "--batch-size", "128",
               "--batches", "40", "--warmup", "4", "--workers", str(args.workers), "--json"]
        if verify:
            cmd.append("--verify")
        r = json.loads(run(cmd))
        if best is None or r["images_per_s"] > best["images_per_s"]:
            best = r
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=os.path.join(ROOT, "target/release/supervision"))
    p.add_argument("--shards")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--model", default="alexnet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    shards = args.shards or dataset(args.binary, args.images)

    plain = pipeline(args.binary, shards, args, False)
    checked = pipeline(args.binary, shards, args, True)
    verify_s = checked["stage_seconds"]["verify"] / checked["images"]
    with tempfile.TemporaryDirectory() as out:
        step = json.loads(run([args.binary, "train", "--synthetic-data", str(args.steps),
                               "--model", args.model, "--batch-size", str(args.batch_size),
                               "--device", args.device, "--out", out, "--json"]))
    train_ips = step["images_per_s"]
    print(f"shards {shards}: {checked['records']} records, side {checked['side']}, "
          f"{args.workers} workers")
    print(f"verify: {verify_s * 1e6:.1f} us of CPU per image")
    print(f"pipeline: {plain['images_per_s']:.0f} images/s unchecked, "
          f"{checked['images_per_s']:.0f} images/s checked")
    print(f"train {args.model} batch {args.batch_size} on {step['device']} "
          f"({step['precision']}): {train_ips:.1f} images/s "
          f"({1e3 / train_ips:.3f} ms per image)")
    print(f"the check adds {100 * verify_s * train_ips:.3f}% of a step's time per image "
          f"in worker CPU time")


if __name__ == "__main__":
    main()
