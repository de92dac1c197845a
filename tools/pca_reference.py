#!/usr/bin/env python3
"""Independent numpy reference for `supervision pca compute` (crate sv-stats).

Straightforward float64 numpy, written from the definitions and not from the Rust
code: per-pixel mean image, per-channel mean and population std, population RGB
covariance, eigen-decomposition with numpy.linalg.eigh (eigenvalues descending,
each eigenvector's largest-magnitude component positive, as sv-stats documents).

Modes:
  fixtures [--out DIR]
      Generate the deterministic test images (the formula in `generate`, which
      crates/sv-stats/tests/it/reference.rs reproduces bit for bit), compute their
      statistics and write DIR/<case>.json (expected values, including the exact
      integer sums) and DIR/<case>-mean.npy (numpy.save of the float32 CHW mean).
      Default DIR: crates/sv-stats/tests/fixtures.
  check --shards DIR --stats FILE.json [--mean-image FILE.npy]
      Read a raw-codec shard dataset with numpy.memmap (offset 4096), compute the
      statistics and compare them with supervision's output (numpy.load reads the
      mean image). Exit status 1 on a mismatch beyond the stated tolerances.
  stats --shards DIR
      Print numpy's statistics of a raw shard dataset as JSON.

Python dependencies (numpy) live in a cached venv made on first use:
  ${SUPERVISION_CACHE:-~/.cache/supervision}/venv-numpy
"""
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toolenv  # noqa: E402

toolenv.ensure("venv-numpy", ["numpy"], probe="numpy")

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402

DATA_OFFSET = 4096

# Test cases: name -> (images, side). 17 exercises the per-pixel tail after the
# 16-pixel blocks; 40x16 crosses nothing but is a second geometry.
CASES = {"gen-40x16": (40, 16), "gen-9x17": (9, 17)}

# Tolerances the Rust tests and `check` use (relative to the largest entry).
TOL_MEAN = 1e-12
TOL_COV = 1e-10
TOL_EIGVAL = 1e-10
TOL_EIGVEC = 1e-8


def generate(n, side, first=0):
    """Images first..first+n as (n, side, side, 3) uint8, from a fixed integer formula.

    With i, y, x the image, row and column (uint32, arithmetic mod 2^32):
      h(c)  = mix((i*73856093) ^ (y*19349663) ^ (x*83492791) ^ (c*2654435761))
      mix(v): v ^= v >> 15; v *= 0x2c1b3c6d; v ^= v >> 12
      base  = (i*37 + y*11 + x*5) % 160
      R = base + h(0) % 96;  G = (3*base)//4 + h(1) % 64 + 40;  B = base//2 + h(2) % 128
    """
    i, y, x = np.meshgrid(np.arange(first, first + n, dtype=np.uint32), np.arange(side, dtype=np.uint32),
                          np.arange(side, dtype=np.uint32), indexing="ij")

    def h(c):
        v = (i * np.uint32(73856093)) ^ (y * np.uint32(19349663)) ^ (x * np.uint32(83492791)) \
            ^ np.uint32((c * 2654435761) % 2**32)
        v = v ^ (v >> np.uint32(15))
        v = v * np.uint32(0x2C1B3C6D)
        v = v ^ (v >> np.uint32(12))
        return v

    base = (i * 37 + y * 11 + x * 5) % 160
    r = base + h(0) % 96
    g = (3 * base) // 4 + h(1) % 64 + 40
    b = base // 2 + h(2) % 128
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def orient(v):
    k = int(np.argmax(np.abs(v)))  # first index on ties, as sv-stats
    return -v if v[k] < 0 else v


def statistics(batches, side):
    """Statistics of an iterable of (k, side, side, 3) uint8 arrays."""
    n = 0
    elem = np.zeros((side, side, 3), dtype=np.uint64)
    ch = [0, 0, 0]
    prod = np.zeros((3, 3), dtype=object)
    for a in batches:
        n += a.shape[0]
        elem += a.sum(axis=0, dtype=np.uint64)
        x = a.reshape(-1, 3).astype(np.int64)
        for c in range(3):
            ch[c] += int(x[:, c].sum())
            for d in range(3):
                prod[c, d] += int((x[:, c] * x[:, d]).sum())
    pixels = n * side * side
    mean_img = elem.astype(np.float64) / n                      # HWC
    mean = np.array([ch[c] / pixels for c in range(3)])
    # Population covariance from exact integer sums (Python ints, exact).
    cov = np.array([[(pixels * prod[c, d] - ch[c] * ch[d]) / pixels**2 for d in range(3)]
                    for c in range(3)], dtype=np.float64)
    std = np.sqrt(np.diag(cov))
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    eigval = np.maximum(w[order], 0.0)
    eigvec = np.array([orient(v[:, k] / np.linalg.norm(v[:, k])) for k in order])
    return {
        "images": n,
        "pixels": pixels,
        "side": side,
        "channel_sums": ch,
        "products": [int(prod[0, 0]), int(prod[1, 1]), int(prod[2, 2]),
                     int(prod[0, 1]), int(prod[0, 2]), int(prod[1, 2])],
        "mean_255": mean.tolist(),
        "std_255": std.tolist(),
        "covariance_255": cov.tolist(),
        "eigenvalues_255": eigval.tolist(),
        "eigenvectors": eigvec.tolist(),
        "_mean_image_chw": mean_img.transpose(2, 0, 1).astype("<f4"),
    }


def raw_batches(shards, chunk=256):
    with open(os.path.join(shards, "manifest.json")) as f:
        m = json.load(f)
    if m["codec"] != "raw":
        sys.exit(f"{shards}: codec {m['codec']}: the numpy reference reads raw shards only")
    side = m["side"]

    def gen():
        for s in m["shards"]:
            mm = np.memmap(os.path.join(shards, s["name"]), dtype=np.uint8, mode="r",
                           offset=DATA_OFFSET, shape=(s["records"], side, side, 3))
            for lo in range(0, s["records"], chunk):
                yield np.asarray(mm[lo:lo + chunk])
    return gen(), side


def fixtures(out):
    os.makedirs(out, exist_ok=True)
    for name, (n, side) in CASES.items():
        st = statistics([generate(n, side)], side)
        np.save(os.path.join(out, f"{name}-mean.npy"), st.pop("_mean_image_chw"))
        st["generator"] = f"tools/pca_reference.py generate({n}, {side})"
        st["tolerances"] = {"mean": TOL_MEAN, "covariance": TOL_COV,
                            "eigenvalues": TOL_EIGVAL, "eigenvectors": TOL_EIGVEC}
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(st, f, indent=1)
            f.write("\n")
        print(f"wrote {out}/{name}.json and {name}-mean.npy")


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check(shards, stats_path, mean_path):
    batches, side = raw_batches(shards)
    ref = statistics(batches, side)
    with open(stats_path) as f:
        got = json.load(f)
    s = got["scale_255"]
    u = got["scale_unit"]
    rows = [
        ("images", 0.0 if got["images"] == ref["images"] else 1.0, 0.0),
        ("pixels", 0.0 if got["pixels"] == ref["pixels"] else 1.0, 0.0),
        ("mean_255", rel_err(s["mean"], ref["mean_255"]), TOL_MEAN),
        ("std_255", rel_err(s["std"], ref["std_255"]), TOL_COV),
        ("covariance_255", rel_err(s["covariance"], ref["covariance_255"]), TOL_COV),
        ("eigenvalues_255", rel_err(s["eigenvalues"], ref["eigenvalues_255"]), TOL_EIGVAL),
        ("eigenvectors", rel_err(got["eigenvectors"], ref["eigenvectors"]), TOL_EIGVEC),
        ("covariance_unit", rel_err(u["covariance"], np.array(ref["covariance_255"]) / 255**2),
         TOL_COV),
        ("paper magnitudes_unit",
         rel_err(got["lighting"]["paper"]["magnitudes_unit"],
                 np.array(ref["eigenvalues_255"]) / 255**2), TOL_EIGVAL),
        ("cuda_convnet2 magnitudes_255",
         rel_err(got["lighting"]["cuda_convnet2"]["magnitudes_255"],
                 np.sqrt(ref["eigenvalues_255"])), TOL_EIGVAL),
    ]
    if mean_path:
        mean = np.load(mean_path)
        want = ref["_mean_image_chw"]
        shape_ok = mean.shape == want.shape and mean.dtype == np.dtype("<f4")
        rows.append(("mean image (numpy.load)",
                     rel_err(mean, want) if shape_ok else 1.0, 1e-7))
    bad = 0
    for name, err, tol in rows:
        ok = err <= tol
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {name:30s} max rel. error {err:.3e} (tolerance {tol:.0e})")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "..", "crates", "sv-stats", "tests", "fixtures"))
    c = sub.add_parser("check")
    c.add_argument("--shards", required=True)
    c.add_argument("--stats", required=True)
    c.add_argument("--mean-image")
    s = sub.add_parser("stats")
    s.add_argument("--shards", required=True)
    a = ap.parse_args()
    if a.mode == "fixtures":
        fixtures(os.path.normpath(a.out))
    elif a.mode == "check":
        sys.exit(check(a.shards, a.stats, a.mean_image))
    else:
        batches, side = raw_batches(a.shards)
        st = statistics(batches, side)
        st.pop("_mean_image_chw")
        print(json.dumps(st, indent=1))


if __name__ == "__main__":
    main()
