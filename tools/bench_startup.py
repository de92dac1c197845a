#!/usr/bin/env python3
"""Start-up cost of the two executables: wall time and peak resident memory of
commands that do almost nothing, so what is measured is loading and starting.

`supervision` never links libtorch; `supervision-torch` (train, eval, predict, model)
does, and `supervision train ...` execs it. Each command runs --repeat times after one
warm-up; the median wall time and the largest peak RSS (os.wait4's ru_maxrss) are
printed.

    tools/bench_startup.py [--bin-dir target/release] [--repeat 20]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(argv, repeat):
    walls, rss = [], 0
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            sys.exit(f"{' '.join(argv)} exited {p.returncode}")
        if i > 0:  # the first run warms the page cache
            walls.append(wall)
            rss = max(rss, usage.ru_maxrss)
    return statistics.median(walls), rss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    sv = os.path.join(a.bin_dir, "supervision")
    svt = os.path.join(a.bin_dir, "supervision-torch")
    rows = [
        ("supervision --version", [sv, "--version"]),
        ("supervision shard --help", [sv, "shard", "--help"]),
        ("supervision-torch --version", [svt, "--version"]),
        ("supervision model list (execs supervision-torch)", [sv, "model", "list"]),
    ]
    print(f"{'command':<52} {'median wall ms':>15} {'peak RSS MiB':>13}")
    for name, argv in rows:
        if not os.access(argv[0], os.X_OK):
            print(f"{name:<52} {'missing: ' + argv[0]}")
            continue
        wall, rss = measure(argv, a.repeat)
        print(f"{name:<52} {wall * 1000:>15.1f} {rss:>13.1f}")


if __name__ == "__main__":
    main()
