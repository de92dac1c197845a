#!/usr/bin/env python3
"""`supervision pca compute` against a careful numpy implementation, same bytes,
same run.

Both read the same raw shard dataset: supervision through its memory map, numpy
through numpy.memmap(offset=4096) of every shard. The numpy implementation is the
fastest way we found to write it in numpy: chunks of 64 images, integer sums for
the per-pixel mean image (uint32 per chunk, uint64 total), and for the channel
products a float64 BLAS matmul Y Y^T over planar (3 x pixels) copies of 8 images at
a time (cache-sized; exact, sums stay below 2^53; faster than X^T X on the
interleaved (pixels x 3) array); channel sums come from the mean-image sums. Each side runs --repeat times after a warm-up pass (page cache hot); the best
time counts. Throughput is bytes of pixel data (images x side x side x 3) per second.

The results are also compared (covariance, eigenvalues, and the mean image .npy read
back with numpy.load) so a fast but wrong run cannot pass.

Without --shards, a dataset of --images generated 256x256 images is made once
(PNG files written here, then `supervision shard build --codec raw`) and cached
under ${SUPERVISION_CACHE:-~/.cache/supervision}/bench-pca-<images>.

Usage:
  cargo build --release -p sv-cli
  tools/bench/pca.py [--images 4000] [--shards DIR] [--workers N] [--repeat 3]
                     [--binary target/release/supervision]
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))  # pca_reference
import pca_reference  # noqa: E402  (makes/reuses the numpy venv, re-execs into it)

import argparse  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def write_png(path, img):
    """Minimal RGB8 PNG (stdlib zlib), so no imaging package is needed."""
    h, w, _ = img.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 1)))
        f.write(chunk(b"IEND", b""))


def make_dataset(binary, images, side=256):
    cache = os.environ.get("SUPERVISION_CACHE", os.path.expanduser("~/.cache/supervision"))
    out = os.path.join(cache, f"bench-pca-{images}")
    if os.path.exists(os.path.join(out, "manifest.json")):
        return out
    classes = 10
    with tempfile.TemporaryDirectory() as tree:
        print(f"writing {images} PNG images to {tree}", file=sys.stderr)
        for start in range(0, images, 100):
            n = min(100, images - start)
            batch = pca_reference.generate(n, side, first=start)
            for k in range(n):
                i = start + k
                d = os.path.join(tree, f"n{i % classes:08d}")
                os.makedirs(d, exist_ok=True)
                write_png(os.path.join(d, f"img_{i:06d}.png"), batch[k])
        print(f"building raw shards in {out}", file=sys.stderr)
        subprocess.check_call([binary, "shard", "build", "--input", tree, "--output", out,
                               "--codec", "raw"])
    return out


def numpy_stats(shards, chunk=64, sub=8):
    with open(os.path.join(shards, "manifest.json")) as f:
        m = json.load(f)
    side = m["side"]
    elem = np.zeros((side, side, 3), dtype=np.uint64)
    prod = np.zeros((3, 3), dtype=np.float64)
    planar = np.empty((3, sub * side * side), dtype=np.float64)
    n = 0
    for s in m["shards"]:
        mm = np.memmap(os.path.join(shards, s["name"]), dtype=np.uint8, mode="r",
                       offset=4096, shape=(s["records"], side, side, 3))
        for lo in range(0, s["records"], chunk):
            a = mm[lo:lo + chunk]
            # uint32 holds 64 x 255; the total is uint64.
            elem += a.sum(axis=0, dtype=np.uint32)
            for k in range(0, a.shape[0], sub):
                part = a[k:k + sub].reshape(-1, 3)
                y = planar[:, :part.shape[0]]
                y[...] = part.T      # planar float64, cache-sized
                prod += y @ y.T      # BLAS gemm; exact (sums < 2^53)
            n += a.shape[0]
    pixels = n * side * side
    ch = elem.reshape(-1, 3).sum(axis=0, dtype=np.uint64).astype(np.float64)
    mean = ch / pixels
    cov = prod / pixels - np.outer(mean, mean)
    w, v = np.linalg.eigh(cov)
    mean_img = (elem.astype(np.float64) / n).transpose(2, 0, 1).astype("<f4")
    return {"images": n, "bytes": pixels * 3, "cov": cov, "eigval": w[::-1], "mean_image": mean_img}


def best(fn, repeat):
    times = []
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", help="a raw shard dataset (default: a generated one)")
    ap.add_argument("--images", type=int, default=4000, help="images in the generated dataset")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="supervision's --workers for the all-cores run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "supervision"))
    a = ap.parse_args()
    if not os.path.exists(a.binary):
        sys.exit(f"{a.binary} is missing: run `cargo build --release -p sv-cli` first")
    shards = a.shards or make_dataset(a.binary, a.images)
    with open(os.path.join(shards, "manifest.json")) as f:
        m = json.load(f)
    if m["codec"] != "raw":
        sys.exit(f"{shards}: codec {m['codec']}; this benchmark compares raw shards")
    nbytes = m["records"] * m["side"] ** 2 * 3

    out = tempfile.mkdtemp(prefix="bench-pca-")
    stats_path, npy_path = os.path.join(out, "pca.json"), os.path.join(out, "mean.npy")

    def sv(workers, verify):
        cmd = [a.binary, "pca", "compute", "--shards", shards, "--output", stats_path,
               "--mean-image", npy_path, "--workers", str(workers)]
        if not verify:
            cmd.append("--no-verify")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    print(f"dataset: {shards}: {m['records']} images of {m['side']}x{m['side']}, "
          f"{nbytes / 1e9:.3f} GB of pixels; {os.cpu_count()} CPUs; best of {a.repeat}")
    numpy_stats(shards)  # warm the page cache
    t_np, ref = best(lambda: numpy_stats(shards), a.repeat)
    rows = [("numpy (memmap, chunked, integer sums, BLAS)", t_np)]
    for workers, verify in [(1, False), (1, True), (a.workers, False), (a.workers, True)]:
        t, _ = best(lambda: sv(workers, verify), a.repeat)
        rows.append((f"supervision pca compute --workers {workers}"
                     + ("" if verify else " --no-verify"), t))

    for name, t in rows:
        print(f"{name:58s} {t:8.3f} s  {nbytes / t / 1e9:7.3f} GB/s  {t_np / t:6.1f}x numpy")

    # Same answer? (the last run wrote these files)
    got = json.load(open(stats_path))
    cov = np.array(got["scale_255"]["covariance"])
    cov_err = np.max(np.abs(cov - ref["cov"])) / np.max(np.abs(ref["cov"]))
    ev_err = np.max(np.abs(np.array(got["scale_255"]["eigenvalues"]) - ref["eigval"])) / ref["eigval"][0]
    mean = np.load(npy_path)
    mean_err = float(np.max(np.abs(mean - ref["mean_image"])))
    print(f"agreement: covariance rel. {cov_err:.1e}, eigenvalues rel. {ev_err:.1e}, "
          f"mean image (numpy.load, shape {mean.shape}, {mean.dtype}) max abs {mean_err:.1e}")
    if got["images"] != ref["images"] or cov_err > 1e-9 or ev_err > 1e-9 or mean_err > 1e-4:
        sys.exit("supervision and numpy disagree")


if __name__ == "__main__":
    main()
