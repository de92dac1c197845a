#!/usr/bin/env python3
"""PyTorch eager peer for `supervision train`: the paper's AlexNet (channel groups 2 in
conv2/4/5, LRN k=2 n=5 alpha=1e-4 beta=0.75 after ReLU of conv1/conv2, overlapping
max-pool 3/2, dropout 0.5 on fc6/fc7, 227 input), the paper's update rule written with
foreach ops (v = 0.9 v - wd*lr*w - lr*g; w += v), cross-entropy, batch 128.

Data is already on the device as uint8 NHWC, normalised there every step exactly as
our trainer does (flip by mask, lighting offset, mean/std), so both sides do the same
work per step. cuDNN autotuning is on, as in our binary. Prints one JSON object.

    python3 tools/gpu/torch_alexnet_bench.py --device cuda --steps 200
    python3 tools/gpu/torch_alexnet_bench.py --device cpu --steps 2 --batch-size 4  # smoke
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class PaperLRN(nn.Module):
    """The paper's formula. PyTorch divides alpha by `size`, so pass 5 * 1e-4."""

    def forward(self, x):
        return F.local_response_norm(x, size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)


def alexnet(classes: int) -> nn.Module:
    def conv(i, o, k, s, p, g, bias):
        c = nn.Conv2d(i, o, k, stride=s, padding=p, groups=g)
        nn.init.normal_(c.weight, 0.0, 0.01)
        nn.init.constant_(c.bias, bias)
        return c

    def fc(i, o, bias):
        l = nn.Linear(i, o)
        nn.init.normal_(l.weight, 0.0, 0.01)
        nn.init.constant_(l.bias, bias)
        return l

    return nn.Sequential(
        conv(3, 96, 11, 4, 0, 1, 0.0), nn.ReLU(), PaperLRN(), nn.MaxPool2d(3, 2),
        conv(96, 256, 5, 1, 2, 2, 1.0), nn.ReLU(), PaperLRN(), nn.MaxPool2d(3, 2),
        conv(256, 384, 3, 1, 1, 1, 0.0), nn.ReLU(),
        conv(384, 384, 3, 1, 1, 2, 1.0), nn.ReLU(),
        conv(384, 256, 3, 1, 1, 2, 1.0), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(),
        fc(9216, 4096, 1.0), nn.ReLU(), nn.Dropout(0.5),
        fc(4096, 4096, 1.0), nn.ReLU(), nn.Dropout(0.5),
        fc(4096, classes, 0.0),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--side", type=int, default=227)
    args = ap.parse_args()

    dev = torch.device(args.device)
    if dev.type == "cuda":
        assert torch.cuda.is_available(), "CUDA not available to PyTorch"
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = alexnet(args.classes).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    assert args.side != 227 or args.classes != 1000 or n_params == 60_965_224, n_params
    params = [p for p in model.parameters()]
    vel = [torch.zeros_like(p) for p in params]
    lr, wd, mom = 0.01, 0.0005, 0.9

    b, s = args.batch_size, args.side
    images = torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, args.classes, (b,), device=dev)
    flips = torch.randint(0, 2, (b,), device=dev).bool().view(-1, 1, 1, 1)
    lighting = torch.randn(b, 3, device=dev).view(-1, 3, 1, 1)
    mean = torch.tensor([123.675, 116.28, 103.53], device=dev).view(1, 3, 1, 1)
    inv_std = 1.0 / torch.tensor([58.395, 57.12, 57.375], device=dev).view(1, 3, 1, 1)

    def step():
        x = images.permute(0, 3, 1, 2).float()
        x = torch.where(flips, x.flip(3), x)
        x = ((x + lighting - mean) * inv_std).contiguous()
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        with torch.no_grad():
            grads = [p.grad for p in params]
            torch._foreach_mul_(vel, mom)
            torch._foreach_add_(vel, params, alpha=-wd * lr)
            torch._foreach_add_(vel, grads, alpha=-lr)
            torch._foreach_add_(params, vel)
            for p in params:
                p.grad = None
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for _ in range(args.warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    dt = time.perf_counter() - t
    print(json.dumps({
        "mode": "pytorch-eager",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "params": n_params,
        "batch_size": b,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "images_per_s": args.steps * b / dt,
        "final_loss": float(loss.detach()),
    }))


if __name__ == "__main__":
    main()
