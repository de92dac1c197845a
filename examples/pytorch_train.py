#!/usr/bin/env python3
"""Train the paper's AlexNet in PyTorch from SuperVision shards through
supervision.Loader, save a checkpoint with the loader's state, and resume it exactly.

    pip install ./crates/sv-py            # the `supervision` package (needs Rust)
    supervision synth --output data/synth --classes 10 --per-class 40
    supervision shard build --input data/synth/train --output data/shards/train
    supervision pca compute --shards data/shards/train --output data/pca.json
    python examples/pytorch_train.py --shards data/shards/train --stats data/pca.json \\
        --steps 20 --save-every 10 --checkpoint run.pt
    python examples/pytorch_train.py ... --steps 40 --resume run.pt   # continues at step 20

The loader gives float32 NCHW batches with the paper's augmentation (random crop,
flip, PCA lighting) and the statistics' mean and std already applied; the arrays are
the pipeline's own buffers, which torch.from_numpy wraps without a copy. The
checkpoint holds the model, the optimizer, torch's RNG state (dropout) and
loader.state_dict(), so a resumed run sees exactly the batches, and computes exactly
the weights, of a run that never stopped (on the CPU, with the same thread count).
On a GPU, move each batch with .to(device, non_blocking=True).
"""

import argparse
import sys
import time

import torch
from torch import nn

import supervision


class AlexNet(nn.Module):
    """The network of Krizhevsky, Sutskever and Hinton (2012), section 3: five
    convolutions (LRN after the first two, overlapping 3x3 max pooling), three fully
    connected layers with dropout. `width` scales every layer's channels (1.0 = the
    paper's); the pooling before the classifier is adaptive, so crops other than 227
    work (at least 67 pixels)."""

    def __init__(self, classes, width=1.0):
        super().__init__()

        def c(n):
            return max(1, int(round(n * width)))

        self.features = nn.Sequential(
            nn.Conv2d(3, c(96), 11, stride=4), nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c(96), c(256), 5, padding=2), nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c(256), c(384), 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c(384), c(384), 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c(384), c(256), 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.AdaptiveAvgPool2d(6),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(c(256) * 36, c(4096)), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(c(4096), c(4096)), nn.ReLU(inplace=True),
            nn.Linear(c(4096), classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="training shard dataset")
    p.add_argument("--stats", help="statistics from compute_stats / `pca compute` "
                   "(mean, std, PCA lighting); default: ImageNet's")
    p.add_argument("--steps", type=int, default=20, help="train until this many steps in all")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--crop", type=int, default=227)
    p.add_argument("--width", type=float, default=1.0, help="channel width factor")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="loader threads (default: all cores)")
    p.add_argument("--checkpoint", default="checkpoint.pt", help="where to save")
    p.add_argument("--save-every", type=int, default=0, help="also save every N steps")
    p.add_argument("--resume", help="a checkpoint to continue from")
    a = p.parse_args(argv)

    torch.manual_seed(a.seed)
    loader = supervision.Loader(
        a.shards, a.batch_size, crop=a.crop, seed=a.seed, workers=a.workers,
        lighting=a.stats or "imagenet", stats=a.stats,
        mean="channel" if a.stats else "imagenet", output="float32",
    )
    classes = len(supervision.Dataset(a.shards).classes)
    model = AlexNet(classes, a.width)
    # the paper: SGD, momentum 0.9, weight decay 0.0005
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    step = 0
    if a.resume:
        ckpt = torch.load(a.resume, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["loader"])
        torch.set_rng_state(ckpt["rng"])
        step = ckpt["step"]
        print(f"resumed at step {step}: epoch {ckpt['loader']['epoch']}, "
              f"batch {ckpt['loader']['batch']}")

    def save(path):
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "loader": loader.state_dict(), "rng": torch.get_rng_state(),
                    "step": step}, path)

    model.train()
    started = time.monotonic()
    while step < a.steps:
        for images, labels in loader:  # one epoch (or its rest, after a resume)
            x = torch.from_numpy(images)  # no copy: the loader's batch buffer
            y = torch.from_numpy(labels)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            print(f"step {step} epoch {loader.epoch} loss {loss.item():.4f}", flush=True)
            if a.save_every and step % a.save_every == 0:
                save(a.checkpoint)
            if step >= a.steps:
                break
    save(a.checkpoint)
    print(f"{step} steps, {time.monotonic() - started:.1f} s; saved {a.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
