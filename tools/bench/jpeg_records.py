#!/usr/bin/env python3
"""JPEG records at 4:2:0 and 4:4:4 chroma: size, quality against the raw record, and
how fast `supervision bench pipeline` reads them, in one run on the same images.

From one image tree (default: `supervision synth`, --images training images) it builds
a raw shard set and two jpeg sets (--quality, --subsampling 4:2:0 and 4:4:4), then
reports per set:
  bytes per record     shard bytes / records
  PSNR (dB)            each JPEG record decoded (PIL, libjpeg-turbo) against its raw
                       record: 10 log10(255^2 / MSE) over all pixels of all records,
                       and the worst record's
  images/s             `supervision bench pipeline --output u8` (batch 128, random 227
                       crops, --workers), best of --repeat runs, the sets alternating

Usage:
  cargo build --release -p sv-cli --no-default-features
  python3 tools/bench/jpeg_records.py [--images 1280] [--workers N] [--repeat 3]
                                      [--input TREE] [--binary target/release/supervision]
Runs itself under a cached venv with Pillow and numpy, as the other tools/ scripts.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # tools/: toolenv
import toolenv  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def run(cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("failed (%d): %s\n%s%s" % (r.returncode, " ".join(map(str, cmd)), r.stdout, r.stderr))
    return r.stdout


def records(dataset):
    """(shard path, offset, length) of every record, and the manifest."""
    import struct

    m = json.loads((dataset / "manifest.json").read_text())
    out = []
    for s in m["shards"]:
        path = dataset / s["name"]
        with open(path, "rb") as f:
            (index_offset,) = struct.unpack_from("<Q", f.read(64), 40)
            f.seek(index_offset)
            index = f.read(24 * s["records"])
        out += [(path,) + struct.unpack_from("<QI", index, 24 * i) for i in range(s["records"])]
    return out, m


def psnr(raw, jpeg):
    import io

    import numpy as np
    from PIL import Image

    raw_recs, m = records(raw)
    jpeg_recs, _ = records(jpeg)
    side = m["side"]
    total, worst = 0.0, float("inf")
    for (rp, ro, rl), (jp, jo, jl) in zip(raw_recs, jpeg_recs):
        with open(rp, "rb") as f:
            f.seek(ro)
            a = np.frombuffer(f.read(rl), np.uint8).reshape(side, side, 3).astype(np.float64)
        with open(jp, "rb") as f:
            f.seek(jo)
            b = np.asarray(Image.open(io.BytesIO(f.read(jl))).convert("RGB"), np.float64)
        mse = float(((a - b) ** 2).mean())
        total += mse
        worst = min(worst, 10 * np.log10(255**2 / max(mse, 1e-12)))
    mse = total / len(raw_recs)
    return 10 * np.log10(255**2 / mse), worst


def main():
    toolenv.ensure("venv-tools", ["pillow", "numpy"], probe="numpy")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1280)
    ap.add_argument("--input", type=Path, help="image tree (class folders); default: synth")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "supervision")
    args = ap.parse_args()
    if not args.binary.exists():
        sys.exit(f"{args.binary} not found: cargo build --release -p sv-cli --no-default-features")
    with tempfile.TemporaryDirectory(prefix="sv-jpeg-records-") as tmp:
        tmp = Path(tmp)
        tree = args.input
        if tree is None:
            run([args.binary, "synth", "--output", tmp / "synth", "--classes", 10,
                 "--per-class", max(1, args.images // 10), "--val-per-class", 1])
            tree = tmp / "synth" / "train"
        raw = tmp / "raw"
        run([args.binary, "shard", "build", "--input", tree, "--output", raw, "--codec", "raw"])
        sets = {}
        for sub in ("4:2:0", "4:4:4"):
            d = tmp / ("jpeg" + sub.replace(":", ""))
            run([args.binary, "shard", "build", "--input", tree, "--output", d, "--codec", "jpeg",
                 "--quality", args.quality, "--subsampling", sub])
            sets[sub] = d
        speed = {k: 0.0 for k in ["raw"] + list(sets)}
        for _ in range(args.repeat):
            for k, d in [("raw", raw)] + list(sets.items()):
                out = run([args.binary, "bench", "pipeline", "--shards", d, "--output", "u8",
                           "--workers", args.workers, "--batches", args.batches, "--warmup", 3,
                           "--no-digest", "--json"])
                speed[k] = max(speed[k], json.loads(out)["images_per_s"])
        n = json.loads((raw / "manifest.json").read_text())["records"]
        print(f"{n} records from {tree}, quality {args.quality}, {args.workers} workers, "
              f"best of {args.repeat}, load average {os.getloadavg()[0]:.1f}")
        print(f"{'set':<14}{'bytes/record':>14}{'PSNR dB':>10}{'worst dB':>10}{'images/s':>11}")
        for k, d in [("raw", raw)] + list(sets.items()):
            m = json.loads((d / "manifest.json").read_text())
            size = sum(s["bytes"] for s in m["shards"]) / m["records"]
            if k == "raw":
                print(f"{'raw':<14}{size:>14.0f}{'exact':>10}{'':>10}{speed[k]:>11.0f}")
            else:
                mean, worst = psnr(raw, d)
                print(f"{'jpeg ' + k:<14}{size:>14.0f}{mean:>10.2f}{worst:>10.2f}{speed[k]:>11.0f}")


if __name__ == "__main__":
    main()
