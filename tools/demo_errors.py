#!/usr/bin/env python3
"""Where the demo's remaining validation errors come from.

The synthetic images are not square and their object sits anywhere in the frame, as in
ImageNet. Stored as the paper stores images (shorter side scaled, then the central
square kept), part or all of the object can fall outside what the network ever sees;
a few files are grayscale, and the classes are told apart mostly by colour. This
script predicts every validation image of a `tools/demo.sh` output with its trained
checkpoint (ten-crop, as the demo's final figure) and groups the errors by how much of
the object's box (from LOC_val_solution.csv) survives in the stored square.

Usage:
  tools/demo.sh demo-out
  python3 tools/demo_errors.py demo-out [--bin target/release/supervision]

Runs itself under a cached venv with Pillow (${SUPERVISION_CACHE:-~/.cache/supervision}/venv-tools),
creating it on first use.
"""

import argparse
import csv
import glob
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toolenv  # noqa: E402

toolenv.ensure("venv-tools", ["pillow", "numpy"], probe="PIL")

from PIL import Image  # noqa: E402


def kept_share(path, box):
    """Share of the object's box inside the centred square of the image."""
    with Image.open(path) as im:
        (w, h), gray = im.size, im.mode in ("L", "LA")
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    x0, y0, x1, y1 = box
    ix = max(0.0, min(x1, left + side) - max(x0, left))
    iy = max(0.0, min(y1, top + side) - max(y0, top))
    area = (x1 - x0) * (y1 - y0)
    return (ix * iy / area if area > 0 else 0.0), gray


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the folder tools/demo.sh wrote")
    ap.add_argument("--bin", default="target/release/supervision")
    args = ap.parse_args()
    imagenet = os.path.join(args.out, "imagenet")
    images = sorted(glob.glob(os.path.join(imagenet, "val", "*.JPEG")))
    checkpoint = os.path.join(args.out, "run", "last.safetensors")
    pred = json.loads(
        subprocess.run(
            [args.bin, "predict", "--checkpoint", checkpoint, "--ten-crop", "--top", "1",
             "--json", *images],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    predicted = {os.path.basename(p["image"]).rsplit(".", 1)[0]: p["top"][0]["wnid"] for p in pred}
    groups = {}
    order = ["grayscale file", "object < 25% kept", "object 25-50% kept", "object >= 50% kept"]
    with open(os.path.join(imagenet, "LOC_val_solution.csv")) as f:
        for row in csv.DictReader(f):
            fields = row["PredictionString"].split()
            wnid, box = fields[0], [float(v) for v in fields[1:5]]
            share, gray = kept_share(os.path.join(imagenet, "val", row["ImageId"] + ".JPEG"), box)
            if gray:
                group = order[0]
            elif share < 0.25:
                group = order[1]
            elif share < 0.5:
                group = order[2]
            else:
                group = order[3]
            n, wrong = groups.get(group, (0, 0))
            groups[group] = (n + 1, wrong + (predicted[row["ImageId"]] != wnid))
    total = sum(n for n, _ in groups.values())
    wrong_all = sum(w for _, w in groups.values())
    print(f"{'validation images':<22} {'images':>7} {'wrong':>6} {'top-1 error':>12}")
    for g in order:
        n, w = groups.get(g, (0, 0))
        if n:
            print(f"{g:<22} {n:>7} {w:>6} {100 * w / n:>11.1f}%")
    print(f"{'all':<22} {total:>7} {wrong_all:>6} {100 * wrong_all / total:>11.1f}%")


if __name__ == "__main__":
    main()
