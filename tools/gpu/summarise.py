#!/usr/bin/env python3
"""Summary table of tools/gpu/validate.sh from the files it left in RESULTS:

- `ceiling-<mode>.out`: our compute-only ceiling (`train --synthetic-data --json`);
- `e2e-<mode>-metrics.jsonl`: our end-to-end run's metrics windows;
- `pytorch-<mode>.out`: the PyTorch peer's JSON line.

End-to-end images/s is total images over total time of the windows after the first
(which holds start-up and cuDNN autotuning; the trainer synchronises the device at
the first and last window of an epoch, so the remaining windows' wall time is exact).
Missing or failed parts print as `-`; the table is always printed.

    summarise.py RESULTS BATCH MODEL
"""
import glob
import json
import os
import sys


def load_json(path):
    """The JSON object a stage printed on stdout, or None if it did not finish."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def e2e(path, batch):
    """(images/s, data-wait share, windows) over the windows after the first."""
    try:
        rows = [json.loads(l) for l in open(path) if l.strip()]
    except (OSError, ValueError):
        return None
    windows = [r for r in rows if r.get("kind") == "train"]
    if len(windows) < 2:
        return None
    images = secs = waited = 0.0
    for prev, cur in zip(windows, windows[1:]):
        n = (cur["step"] - prev["step"]) * batch
        t = n / cur["images_per_s"]
        images += n
        secs += t
        waited += cur["data_wait_share"] * t
    return images / secs, waited / secs, len(windows) - 1


def fmt(v, spec="10.1f"):
    return format(v, spec) if isinstance(v, (int, float)) else f"{'-':>10}"


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def main():
    results, batch = sys.argv[1], int(sys.argv[2])
    model = sys.argv[3] if len(sys.argv) > 3 else "alexnet"
    modes = sorted({
        os.path.basename(p).split("-", 1)[1].rsplit(".", 1)[0].replace("-metrics", "")
        for pattern in ("ceiling-*.out", "e2e-*-metrics.jsonl")
        for p in glob.glob(os.path.join(results, pattern))
    })
    peers = {}
    for p in glob.glob(os.path.join(results, "pytorch-*.out")):
        j = load_json(p)
        if j:
            peers[os.path.basename(p)[len("pytorch-"):-len(".out")]] = j
    device = next((j.get("device") for j in peers.values()), "?")
    torch = next((j.get("torch") for j in peers.values()), "?")
    print(f"device: {device}; torch {torch}; batch {batch}; ours: {model}")
    if model != "alexnet":
        print("(the PyTorch peer is always the paper's alexnet: ratios to it mean nothing here)")
    print()
    print("PyTorch peer (device-resident uint8 batch, normalised on the device each step):")
    for name, j in sorted(peers.items()):
        print(f"  {name:<16} {fmt(j.get('images_per_s'))} images/s")
    print()
    head = f"{'ours: mode':<28} {'ceiling':>10} {'end-to-end':>10} {'e2e/ceil':>10} {'wait %':>10} {'peer':>10} {'e2e/peer':>10}"
    print(head)
    print("-" * len(head))
    for mode in modes:
        ceil = load_json(os.path.join(results, f"ceiling-{mode}.out"))
        ceil_ips = ceil.get("images_per_s") if ceil else None
        run = e2e(os.path.join(results, f"e2e-{mode}-metrics.jsonl"), batch)
        ips, wait = (run[0], 100 * run[1]) if run else (None, None)
        # the peer of the same precision and layout (copy stream and mean image do
        # not exist on the PyTorch side)
        key = "-".join(mode.split("-")[:2])
        peer = peers.get(key, {}).get("images_per_s")
        print(f"{mode:<28} {fmt(ceil_ips)} {fmt(ips)} {fmt(ratio(ips, ceil_ips), '10.3f')} "
              f"{fmt(wait, '10.2f')} {fmt(peer)} {fmt(ratio(ips, peer), '10.3f')}")
    print()
    print("targets: end-to-end >= 1.0x the PyTorch peer of the same precision and layout; "
          "end-to-end >= 0.95x our ceiling")


if __name__ == "__main__":
    main()
