#!/usr/bin/env python3
"""Peak resident memory of `supervision bench pipeline` against dataset size.

For each size in --sizes, `supervision synth` writes that many training images and
`supervision shard build` turns them into a raw shard set (cached under
${SUPERVISION_CACHE:-~/.cache/supervision}/bench-rss-<images>). Then the pipeline
streams one whole epoch plus --extra batches over it (random 227 crops, flips,
lighting, uint8), once keeping the shards mapped and once with --release-pages,
and the report's peak resident set (whole, anonymous, file-backed) is printed next to
the dataset size, with images/s.

Needs only the Python standard library and a release binary:
  cargo build --release -p sv-cli
  tools/bench/rss.py [--sizes 1280,5120] [--workers N] [--binary PATH] [--json FILE]
"""
import argparse
import json
import math
import os
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CACHE = os.environ.get("SUPERVISION_CACHE", os.path.expanduser("~/.cache/supervision"))
BATCH = 128


def run(cmd, **kw):
    print("[rss] $ " + " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


def dataset(binary, images):
    """A cached raw shard set of `images` synthetic training images."""
    base = os.path.join(CACHE, f"bench-rss-{images}")
    raw = os.path.join(base, "raw")
    done = os.path.join(base, ".done")
    if not os.path.exists(done):
        os.makedirs(base, exist_ok=True)
        classes = 10
        tree = os.path.join(base, "synth")
        run([binary, "synth", "--output", tree, "--classes", str(classes),
             "--per-class", str(math.ceil(images / classes)), "--val-per-class", "1",
             "--min-side", "256", "--max-side", "320", "--force"])
        run([binary, "shard", "build", "--input", os.path.join(tree, "train"),
             "--output", raw, "--codec", "raw", "--force"])
        open(done, "w").close()
    return raw


def shard_bytes(raw):
    with open(os.path.join(raw, "manifest.json")) as f:
        manifest = json.load(f)
    return manifest, sum(s["bytes"] for s in manifest["shards"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1280,5120",
                    help="comma-separated dataset sizes in images")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--extra", type=int, default=10,
                    help="batches beyond one epoch (the second epoch re-reads)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "supervision"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: run `cargo build --release -p sv-cli` first")

    rows = []
    for images in [int(s) for s in args.sizes.split(",") if s]:
        raw = dataset(args.binary, images)
        manifest, size = shard_bytes(raw)
        records = sum(s["records"] for s in manifest["shards"])
        batches = records // BATCH + args.extra
        for release in (False, True):
            cmd = [args.binary, "bench", "pipeline", "--shards", raw, "--batch-size",
                   str(BATCH), "--workers", str(args.workers), "--batches", str(batches),
                   "--no-digest", "--json"]
            if release:
                cmd.append("--release-pages")
            report = json.loads(run(cmd, capture_output=True, text=True).stdout)
            mem = report.get("memory") or {}
            rows.append({
                "records": records,
                "dataset_mib": size / 2**20,
                "release_pages": release,
                "batches": batches,
                "images_per_s": report["images_per_s"],
                **mem,
            })

    print(f"\npeak resident MiB, {args.workers} workers, batch {BATCH}, uint8 227 crops, "
          f"one epoch + {args.extra} batches")
    print(f"  {'records':>8} {'dataset':>9} {'pages':>9} {'rss':>8} {'anon':>8} "
          f"{'file':>8} {'images/s':>9}")
    for r in rows:
        print(f"  {r['records']:>8} {r['dataset_mib']:>8.0f}M "
              f"{'released' if r['release_pages'] else 'mapped':>9} "
              f"{r.get('peak_rss_mib', float('nan')):>8.1f} "
              f"{r.get('peak_anon_mib', float('nan')):>8.1f} "
              f"{r.get('peak_file_mib', float('nan')):>8.1f} {r['images_per_s']:>9.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
