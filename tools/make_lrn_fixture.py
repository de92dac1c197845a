#!/usr/bin/env python3
"""Golden reference for sv-train's LRN: PyTorch's LocalResponseNorm with the paper's
constants in PyTorch's convention (alpha divided by size, so alpha = 5 * 1e-4), on a
fixed float64 input with activations large enough for the window sum to matter.

    ~/.cache/supervision/venv-torch-2.11.0/bin/python tools/make_lrn_fixture.py

writes crates/sv-train/tests/fixtures/lrn.json (input, shape, output, torch version).
"""
import json
import os

import torch

torch.manual_seed(2012)
shape = [2, 7, 3, 3]
x = (torch.rand(shape, dtype=torch.float64) * 400.0 - 50.0).relu()  # post-ReLU, 0..350
lrn = torch.nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)
y = lrn(x)
out = {
    "source": "torch.nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0), float64",
    "torch": torch.__version__,
    "shape": shape,
    "input": x.flatten().tolist(),
    "output": y.flatten().tolist(),
}
path = os.path.join(os.path.dirname(__file__), "..", "crates", "sv-train", "tests", "fixtures", "lrn.json")
with open(path, "w") as f:
    json.dump(out, f)
    f.write("\n")
print("wrote", os.path.normpath(path))
