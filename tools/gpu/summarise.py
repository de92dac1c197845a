#!/usr/bin/env python3
"""Summary of tools/gpu_train_bench.sh: images/s of our compute-only ceiling, our
end-to-end training (metrics windows after the first, which holds cuDNN autotuning and
warm-up) and PyTorch eager, the ratios, and our data-wait share.

    summarise.py ceiling.json train-metrics.jsonl pytorch.json
"""
import json
import sys


def main():
    ceiling = json.load(open(sys.argv[1]))
    windows = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
    windows = [w for w in windows if w.get("kind") == "train"]
    torch_ = json.load(open(sys.argv[3]))
    steady = windows[1:] if len(windows) > 1 else windows
    if not steady:
        sys.exit("no training windows in the metrics")
    # Every window holds the same number of images, so the total rate over the steady
    # windows is the harmonic mean of their rates.
    ours = len(steady) / sum(1.0 / w["images_per_s"] for w in steady)
    wait = sum(w["data_wait_share"] for w in steady) / len(steady)
    ceil = ceiling["images_per_s"]
    peer = torch_["images_per_s"]
    print(f"device: {torch_.get('device')} (torch {torch_.get('torch')})")
    print(f"ours, compute-only ceiling : {ceil:10.1f} images/s")
    print(f"ours, end to end           : {ours:10.1f} images/s  ({len(steady)} windows after the first)")
    print(f"PyTorch eager, data on GPU : {peer:10.1f} images/s")
    print(f"ours end-to-end / PyTorch  : {ours / peer:10.3f}  (target >= 1.0)")
    print(f"ours end-to-end / ceiling  : {ours / ceil:10.3f}  (target >= 0.95)")
    print(f"ours ceiling / PyTorch     : {ceil / peer:10.3f}")
    print(f"data-wait share (ours)     : {100 * wait:10.2f} %  (target < 5 %)")


if __name__ == "__main__":
    main()
