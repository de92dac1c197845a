#!/usr/bin/env python3
"""JPEG layouts written by libjpeg (through PIL) for sv-image's truncation tests.

Writes crates/sv-image/tests/fixtures/libjpeg-<name>.jpg: small photo-like images in
the layouts the Rust encoder in the tests cannot make: progressive with successive
approximation (libjpeg's default scan script: DC and AC refinement scans), with and
without restart markers, gray and CMYK, and baseline 4:2:0 with restart markers.
sv-image's tests check that each decodes and that every cut of it is refused.

Usage: python3 tools/make_jpeg_fixtures.py [--out DIR]
Runs itself under a cached venv with Pillow, as tools/make_resize_fixtures.py.
"""

import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toolenv  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# name: (mode, width, height, PIL save options)
CASES = {
    "progressive-420": ("RGB", 61, 45, dict(progressive=True, subsampling=2)),
    "progressive-444-rst": ("RGB", 40, 33, dict(progressive=True, subsampling=0, restart_marker_blocks=3)),
    "progressive-gray": ("L", 50, 37, dict(progressive=True)),
    "progressive-cmyk": ("CMYK", 35, 29, dict(progressive=True)),
    "baseline-420-rst": ("RGB", 70, 41, dict(subsampling=2, restart_marker_rows=1)),
}


def picture(rng, mode, w, h):
    """Gradient plus noise: every block has AC energy, so refinement scans carry data."""
    from PIL import Image

    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            px[x, y] = tuple(
                max(0, min(255, (x * (40 + 30 * c) + y * (90 - 20 * c)) // 16 + rng.randrange(-40, 41)))
                for c in range(3)
            )
    return img.convert(mode)


def main():
    toolenv.ensure("venv-tools", ["pillow", "numpy"], probe="PIL")
    import PIL

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "crates/sv-image/tests/fixtures")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(16)
    for name, (mode, w, h, opts) in CASES.items():
        path = args.out / f"libjpeg-{name}.jpg"
        picture(rng, mode, w, h).save(path, "JPEG", quality=90, **opts)
        print(f"{path} ({path.stat().st_size} bytes, Pillow {PIL.__version__})")


if __name__ == "__main__":
    main()
