#!/usr/bin/env python3
"""Shard build from ImageNet's tars against the same build from the extracted tree.

Makes a synthetic ImageNet with its three archives (`supervision synth --archives`),
then times `supervision shard build` on the class-folder tree and on
ILSVRC2012_img_train.tar (a tar of class tars) side by side: the runs alternate
(tree, tar, tar, tree, ...) so drift in machine load falls on both, every run writes a
fresh output folder, and the page cache is warm for both (each input is read once
before timing). Prints images/s for each run, the median of each, and their ratio; and
checks the two datasets are byte-identical.

    cargo build --release -p sv-cli
    tools/bench/tar.py --classes 10 --per-class 100 --repeat 5
"""

import argparse
import filecmp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def timed_build(binary, source, out, args):
    """Wall seconds and peak resident memory (MiB) of one build."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    child = subprocess.Popen([binary, "shard", "build", "--input", source, "--output", out, *args],
                             stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    secs = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"shard build --input {source} failed")
    return secs, usage.ru_maxrss / 1024


def same_dataset(a, b):
    names = sorted(n for n in os.listdir(a) if n.endswith(".svs") or n in ("manifest.json", "rejects.jsonl"))
    other = sorted(n for n in os.listdir(b) if n.endswith(".svs") or n in ("manifest.json", "rejects.jsonl"))
    return names == other and all(filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False) for n in names)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "supervision"))
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--codec", default="raw", choices=["raw", "jpeg"])
    p.add_argument("--keep", help="use (and keep) this folder instead of a temporary one")
    a = p.parse_args()
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} not found: cargo build --release -p sv-cli (or pass --bin)")
    work = a.keep or tempfile.mkdtemp(prefix="sv-bench-tar-")
    data = os.path.join(work, "imagenet")
    if not os.path.exists(os.path.join(data, "ILSVRC2012_img_train.tar")):
        shutil.rmtree(data, ignore_errors=True)
        run([a.bin, "synth", "--output", data, "--classes", str(a.classes), "--per-class",
             str(a.per_class), "--val-per-class", "0", "--archives"])
    tree = os.path.join(data, "train")
    tar = os.path.join(data, "ILSVRC2012_img_train.tar")
    images = a.classes * a.per_class
    args = ["--workers", str(a.workers), "--codec", a.codec]
    out_tree, out_tar = os.path.join(work, "out-tree"), os.path.join(work, "out-tar")
    # Warm the page cache for both inputs (and check they agree).
    timed_build(a.bin, tree, out_tree, args)
    timed_build(a.bin, tar, out_tar, args)
    print(f"{images} images: tree {tree}, archive {tar} "
          f"({os.path.getsize(tar) / 2**20:.1f} MiB)")
    if not same_dataset(out_tree, out_tar):
        sys.exit("the tree and the tar built different datasets")
    rates = {"tree": [], "tar": []}
    rss = {"tree": 0.0, "tar": 0.0}
    for r in range(a.repeat):
        order = [("tree", tree, out_tree), ("tar", tar, out_tar)]
        if r % 2:
            order.reverse()
        for name, source, out in order:
            secs, peak = timed_build(a.bin, source, out, args)
            rates[name].append(images / secs)
            rss[name] = max(rss[name], peak)
            print(f"run {r + 1} {name:4}: {images / secs:8.1f} images/s ({secs:.2f} s, "
                  f"peak RSS {peak:.0f} MiB)")
    mt, ma = statistics.median(rates["tree"]), statistics.median(rates["tar"])
    print(f"\n{images} images, {a.workers} workers, codec {a.codec}, {a.repeat} runs each")
    print(f"median images/s: tree {mt:.1f}, tar {ma:.1f}; tar/tree {ma / mt:.3f}")
    print(f"best images/s:   tree {max(rates['tree']):.1f}, tar {max(rates['tar']):.1f}; "
          f"tar/tree {max(rates['tar']) / max(rates['tree']):.3f}")
    print(f"peak RSS MiB:    tree {rss['tree']:.0f}, tar {rss['tar']:.0f}")
    print("datasets byte-identical: yes")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
