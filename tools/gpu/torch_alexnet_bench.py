#!/usr/bin/env python3
"""PyTorch peer for `supervision train`, written as a PyTorch user would in 2026.

The paper's AlexNet (channel groups 2 in conv2/4/5, LRN k=2 n=5 alpha=1e-4 beta=0.75
after the ReLUs of conv1/conv2 within each tower, overlapping max-pool 3/2, dropout 0.5
on fc6/fc7, 227 input, N(0, 0.01^2) init), cross-entropy, batch 128, and:

- `--precision bf16`: `torch.autocast("cuda", dtype=torch.bfloat16)` around the forward
  pass, fp32 weights (what autocast is for; no GradScaler needed for bf16);
  `--precision fp32`: plain fp32 (libtorch's defaults on both sides: cuDNN may use TF32
  for convolutions, matmuls stay fp32).
- `--channels-last`: model and input in `torch.channels_last`.
- `torch.optim.SGD(momentum=0.9, weight_decay=5e-4, foreach=True)`: the multi-tensor
  update PyTorch picks by default on CUDA (its rule folds the rate into the velocity
  differently from the paper's; the cost per step is the same).

Data is a uint8 NHWC batch already on the device, normalised there every step the way
our trainer does (flip by mask, PCA lighting offset, mean subtraction on the paper's
centred raw 0-255 scale), so both sides do the same work per step; this is the peer of
our device-resident ceiling (`train --synthetic-data`). cuDNN autotuning is on. The
timed steps end with a synchronise; no step reads a value back to the host. Prints one
JSON object.

    python3 tools/gpu/torch_alexnet_bench.py --device cuda --precision bf16 --channels-last
    python3 tools/gpu/torch_alexnet_bench.py --device cpu --steps 1 --warmup 1 --batch-size 2
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class TowerLRN(nn.Module):
    """The paper's LRN in each tower. PyTorch divides alpha by `size`: pass 5 * 1e-4.
    Run in fp32, as our trainer does (autocast would leave its pow in fp32 anyway)."""

    def __init__(self, towers=2):
        super().__init__()
        self.towers = towers

    def forward(self, x):
        n, c, h, w = x.shape
        y = x.float().reshape(n * self.towers, c // self.towers, h, w)
        y = F.local_response_norm(y, size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)
        return y.reshape(n, c, h, w).to(x.dtype)


def alexnet(classes: int) -> nn.Module:
    def conv(i, o, k, s, p, g, bias):
        c = nn.Conv2d(i, o, k, stride=s, padding=p, groups=g)
        nn.init.normal_(c.weight, 0.0, 0.01)
        nn.init.constant_(c.bias, bias)
        return c

    def fc(i, o, bias):
        lin = nn.Linear(i, o)
        nn.init.normal_(lin.weight, 0.0, 0.01)
        nn.init.constant_(lin.bias, bias)
        return lin

    return nn.Sequential(
        conv(3, 96, 11, 4, 0, 1, 0.0), nn.ReLU(inplace=True), TowerLRN(), nn.MaxPool2d(3, 2),
        conv(96, 256, 5, 1, 2, 2, 1.0), nn.ReLU(inplace=True), TowerLRN(), nn.MaxPool2d(3, 2),
        conv(256, 384, 3, 1, 1, 1, 0.0), nn.ReLU(inplace=True),
        conv(384, 384, 3, 1, 1, 2, 1.0), nn.ReLU(inplace=True),
        conv(384, 256, 3, 1, 1, 2, 1.0), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Flatten(),
        fc(9216, 4096, 1.0), nn.ReLU(inplace=True), nn.Dropout(0.5),
        fc(4096, 4096, 1.0), nn.ReLU(inplace=True), nn.Dropout(0.5),
        fc(4096, classes, 0.0),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=1000)
    args = ap.parse_args()

    dev = torch.device(args.device)
    if dev.type == "cuda":
        assert torch.cuda.is_available(), "CUDA not available to PyTorch"
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = alexnet(args.classes).to(dev)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    n_params = sum(p.numel() for p in model.parameters())
    assert args.classes != 1000 or n_params == 60_965_224, n_params
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                          foreach=True)

    b, s = args.batch_size, 227
    images = torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, args.classes, (b,), device=dev)
    flips = torch.randint(0, 2, (b,), device=dev).bool().view(-1, 1, 1, 1)
    lighting = torch.randn(b, 3, device=dev).view(-1, 3, 1, 1)
    mean = torch.tensor([123.675, 116.28, 103.53], device=dev).view(1, 3, 1, 1)
    amp = args.precision == "bf16"

    def step():
        # NHWC uint8 -> NCHW view; the element-wise ops keep the channels-last layout
        x = images.permute(0, 3, 1, 2).float()
        x = torch.where(flips, x.flip(3), x)
        x = (x + lighting - mean).contiguous(memory_format=layout)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
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
        "mode": "pytorch",
        "precision": args.precision,
        "channels_last": args.channels_last,
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
