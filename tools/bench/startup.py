#!/usr/bin/env python3
"""Start-up cost of the two executables: wall time and peak resident memory of
commands that do almost nothing, so what is measured is loading and starting.

`supervision` never links libtorch; `supervision-torch` (train, eval, predict)
does, and `supervision train ...` execs it. Each command runs --repeat times after one
warm-up; the median wall time and the largest peak RSS are printed (the RSS from GNU
time's %M where /usr/bin/time is GNU time: see `measure`).

    tools/bench/startup.py [--bin-dir target/release] [--repeat 20] [--shards DIR]

--shards DIR also times `supervision shard inspect DIR` (a command that opens a
dataset and reads its manifest; e.g. a `tools/demo.sh` output's shards/train).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(argv):
    """Wall seconds and os.wait4's peak RSS (KiB) of one run; exits on failure."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{' '.join(argv)} exited {code}")
    return wall, usage.ru_maxrss


def measure(argv, repeat, gnu_time):
    """Median wall seconds and the largest peak RSS in MiB over `repeat` runs.

    A child's ru_maxrss also counts the process it was before exec: a fork of this
    Python (about 14 MiB), more than a small Rust program uses. So with GNU time on
    the machine the RSS comes from `time -f %M` runs (a fork of `time` itself, about
    1 MiB), and the wall time from plain runs.
    """
    run(argv)  # warms the page cache
    walls, rss = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "maxrss")
        for _ in range(repeat):
            wall, maxrss = run(argv)
            walls.append(wall)
            if gnu_time:
                run([gnu_time, "-f", "%M", "-o", out, *argv])
                with open(out) as f:
                    maxrss = int(f.read().split()[-1])
            rss = max(rss, maxrss)
    return statistics.median(walls), rss / 1024


def find_gnu_time():
    """/usr/bin/time when it is GNU time (it takes -f and -o), else None."""
    path = "/usr/bin/time"
    if not os.access(path, os.X_OK):
        return None
    try:
        ok = subprocess.run([path, "-f", "%M", "-o", os.devnull, "true"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return None
    return path if ok else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--shards", help="also time `supervision shard inspect SHARDS`")
    a = ap.parse_args()
    sv = os.path.join(a.bin_dir, "supervision")
    svt = os.path.join(a.bin_dir, "supervision-torch")
    rows = [
        ("supervision --version", [sv, "--version"]),
        ("supervision shard --help", [sv, "shard", "--help"]),
        *([("supervision shard inspect SHARDS", [sv, "shard", "inspect", a.shards])]
          if a.shards else []),
        ("supervision-torch --version", [svt, "--version"]),
        ("supervision model summary alexnet", [sv, "model", "summary", "alexnet"]),
        ("supervision eval --help (execs supervision-torch)", [sv, "eval", "--help"]),
    ]
    gnu_time = find_gnu_time()
    if gnu_time is None:
        print("no GNU time (/usr/bin/time): peak RSS is os.wait4's, which counts the forked "
              "Python before exec (an upper bound, about 14 MiB at least)")
    print(f"{'command':<52} {'median wall ms':>15} {'peak RSS MiB':>13}")
    for name, argv in rows:
        if not os.access(argv[0], os.X_OK):
            print(f"{name:<52} {'missing: ' + argv[0]}")
            continue
        wall, rss = measure(argv, a.repeat, gnu_time)
        print(f"{name:<52} {wall * 1000:>15.1f} {rss:>13.1f}")


if __name__ == "__main__":
    main()
