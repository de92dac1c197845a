#!/usr/bin/env python3
"""Per-image preparation speed: PIL (multiprocessing) against `supervision shard build`.

Both do the same job on the same images: decode, convert to RGB, shorter side to
SIZE with an antialiasing (BILINEAR) filter, centre SIZE x SIZE crop, and write the
raw SIZE*SIZE*3 bytes of every image to disk (PIL: one output file, in order;
supervision: raw shards). PIL runs one process per core (Pool.imap, chunks of 16)
with the same geometry sv-image uses (resize of the centred square box, which is
also PIL's fastest way to do it). PIL decodes JPEGs at full size unless
--pil-draft-gap is given (then draft() reduces the DCT scale while the shorter side
stays >= gap * SIZE, the same rule as sv-image's reduce_gap).

Each side runs --repeat times, alternating, on a warm page cache; the best run of
each is reported, as images/s and the ratio, and the ratio within each round (PIL
then supervision, back to back) as median, min and max. The supervision side is the whole
command (`shard build` from process start to exit, its closing fsync included).

Inputs. Either an image tree, or `--imagenet-like N`: N JPEGs written by PIL (libjpeg,
quality 90, 4:2:0 as ImageNet's own files) at ImageNet's common sizes (500x375, 375x500,
500x333, 500x500, ..., a few larger), made once from `supervision synth` images scaled
up with photo-like grain added (about 0.6 bytes per pixel, near ImageNet's average,
where plain synthetic drawings would compress far more and decode unrealistically fast),
cached under ${SUPERVISION_CACHE:-~/.cache/supervision}/bench-prep-<N>.

Usage:
  cargo build --release -p sv-cli
  python3 tools/bench/prep_pil.py --imagenet-like 1280 [--workers N] [--repeat 3]
  target/release/supervision synth --output /tmp/synth --classes 10 --per-class 50
  python3 tools/bench/prep_pil.py /tmp/synth/train [--workers N] [--repeat 3]

Runs itself under a cached venv with Pillow (${SUPERVISION_CACHE:-~/.cache/supervision}/venv-tools),
creating it on first use.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # tools/: toolenv
import toolenv  # noqa: E402

REPO = Path(__file__).resolve().parents[2]




SIZE = 256
DRAFT_GAP = 0.0


def init(size, draft_gap):
    global SIZE, DRAFT_GAP
    SIZE, DRAFT_GAP = size, draft_gap


def prepare(path):
    """One image -> SIZE*SIZE*3 RGB bytes, or None when PIL cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if DRAFT_GAP > 0 and im.format == "JPEG":
                want = int(SIZE * DRAFT_GAP)
                im.draft("RGB", (want, want))
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
            return im.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box).tobytes()
    except Exception:  # a reject, as the shard build's rejects report
        return None


# ImageNet's common sizes, with rough weights (most train images are 500 px on the long
# side, landscape 4:3 first), and a few large ones as in the real set.
SIZES = [((500, 375), 40), ((375, 500), 15), ((500, 333), 15), ((333, 500), 5),
         ((500, 500), 8), ((500, 400), 7), ((640, 480), 5), ((1024, 768), 3), ((1600, 1200), 2)]


def imagenet_like(binary, n):
    """N PIL-written JPEGs of ImageNet-like sizes and entropy, in 10 class folders."""
    import numpy as np
    from PIL import Image

    base = Path(toolenv.cache_dir()) / f"bench-prep-{n}"
    tree = base / "train"
    if (base / ".done").exists():
        return tree
    shutil.rmtree(base, ignore_errors=True)
    synth = base / "synth"
    subprocess.run([str(binary), "synth", "--output", str(synth), "--classes", "10",
                    "--per-class", str(max(1, (n + 9) // 10)), "--val-per-class", "1",
                    "--force"], check=True, capture_output=True)
    sources = sorted(p for p in (synth / "train").rglob("*") if p.is_file())[:n]
    rng = np.random.default_rng(2012)
    sizes = [s for s, _ in SIZES]
    weights = np.array([w for _, w in SIZES], dtype=float)
    for i, src in enumerate(sources):
        w, h = sizes[rng.choice(len(sizes), p=weights / weights.sum())]
        with Image.open(src) as im:
            im = im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        px = np.asarray(im, dtype=np.float32)
        # grain: per-pixel noise plus a coarser texture, as sensor noise and detail
        grain = rng.normal(0, 7, (h, w, 1)) + rng.normal(0, 4, (h, w, 3))
        coarse = rng.normal(0, 10, ((h + 7) // 8, (w + 7) // 8, 3)).repeat(8, 0).repeat(8, 1)
        px = np.clip(px + grain + coarse[:h, :w], 0, 255).astype(np.uint8)
        out = tree / src.parent.name / (src.stem + ".JPEG")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(out, "JPEG", quality=90)
    shutil.rmtree(synth)
    (base / ".done").touch()
    return tree


def run_pil(files, workers, size, draft_gap, out_file):
    import multiprocessing as mp

    t = time.perf_counter()
    done = 0
    with mp.Pool(workers, initializer=init, initargs=(size, draft_gap)) as pool, open(out_file, "wb") as f:
        for raw in pool.imap(prepare, files, chunksize=16):
            if raw is not None:
                f.write(raw)
                done += 1
    return done, time.perf_counter() - t


def run_supervision(binary, input_dir, workers, size, out_dir):
    t = time.perf_counter()
    r = subprocess.run(
        [str(binary), "shard", "build", "--input", str(input_dir), "--output", str(out_dir),
         "--codec", "raw", "--workers", str(workers), "--size", str(size)],
        capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit("supervision shard build failed (%d):\n%s%s" % (r.returncode, r.stdout, r.stderr))
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "", dt


def main():
    toolenv.ensure("venv-tools", ["pillow", "numpy"], probe="PIL")
    import PIL
    from PIL import Image

    ap = argparse.ArgumentParser(description="PIL vs supervision shard build, images/s")
    ap.add_argument("input", nargs="?", help="image tree (e.g. synth's train/ folder)")
    ap.add_argument("--imagenet-like", type=int, metavar="N",
                    help="instead of INPUT: N PIL-written JPEGs of ImageNet-like sizes (cached)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="processes / workers (default: cores)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pil-draft-gap", type=float, default=0.0,
                    help="let PIL decode JPEGs at reduced DCT scale (draft) keeping >= gap*size; 0 = off")
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "supervision"))
    args = ap.parse_args()

    binary = Path(args.bin)
    if not binary.exists():
        sys.exit("%s not found: cargo build --release -p sv-cli" % binary)
    if args.imagenet_like:
        args.input = str(imagenet_like(binary, args.imagenet_like))
    elif not args.input:
        sys.exit("give an image tree or --imagenet-like N")
    files = sorted(str(p) for p in Path(args.input).rglob("*") if p.is_file())
    if not files:
        sys.exit("no files under %s" % args.input)
    for p in files:  # warm the page cache for both sides
        Path(p).read_bytes()

    pil_best, sv_best, pil_n, summary = None, None, 0, ""
    rounds = []  # (PIL seconds, supervision seconds) of each round, run back to back
    with tempfile.TemporaryDirectory(prefix="sv-bench-prep-") as tmp:
        for _ in range(args.repeat):
            pil_n, pil_dt = run_pil(files, args.workers, args.size, args.pil_draft_gap, Path(tmp) / "pil.raw")
            pil_best = pil_dt if pil_best is None else min(pil_best, pil_dt)
            out = Path(tmp) / "shards"
            summary, dt = run_supervision(binary, args.input, args.workers, args.size, out)
            shutil.rmtree(out, ignore_errors=True)
            sv_best = dt if sv_best is None else min(sv_best, dt)
            rounds.append((pil_dt, dt))

    n = len(files)
    pil_rate, sv_rate = pil_n / pil_best, n / sv_best
    pixels = 0
    for f in files:
        with Image.open(f) as im:
            pixels += im.size[0] * im.size[1]
    size = sum(Path(f).stat().st_size for f in files)
    print("images: %d under %s (%.2f bytes/pixel, %.0f kB each), workers %d, size %d, best of %d runs"
          % (n, args.input, size / pixels, size / n / 1000, args.workers, args.size, args.repeat))
    print("PIL %s multiprocessing%s: %d images in %.2fs = %.1f images/s"
          % (PIL.__version__, " (draft gap %g)" % args.pil_draft_gap if args.pil_draft_gap else "",
             pil_n, pil_best, pil_rate))
    print("supervision shard build --codec raw: %d inputs in %.2fs = %.1f images/s" % (n, sv_best, sv_rate))
    if summary:
        print("  (%s)" % summary)
    print("ratio supervision / PIL: %.2fx (best against best)" % (sv_rate / pil_rate))
    # This machine's speed can drift between runs: the ratio within each round (the two
    # sides back to back) is steadier than best against best.
    per_round = sorted((n / sv) / (pil_n / pil) for pil, sv in rounds)
    print("ratio within each round: median %.2fx, min %.2fx, max %.2fx (%s)"
          % (statistics.median(per_round), per_round[0], per_round[-1],
             " ".join("%.2f" % r for r in per_round)))


if __name__ == "__main__":
    main()
