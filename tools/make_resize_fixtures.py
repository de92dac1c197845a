#!/usr/bin/env python3
"""Golden references for sv-image's decode + resize + centre crop, made with PIL.

Writes crates/sv-image/tests/fixtures/:
  <name>.<ext>          small inputs (JPEG: RGB, gray, CMYK, one large enough for a
                        reduced DCT scale, one smaller than the output; PNG: RGBA,
                        palette), generated here from a fixed seed
  <name>.<side>.png     PIL's output for that input, lossless
  fixtures.txt          one line per case: input side (and the Pillow version used)

PIL's geometry is the one sv-image implements: the centred square of side
min(w, h) of the source (fractional offsets allowed) resampled to side x side with
the BILINEAR (triangle, antialiasing) filter:
    img.convert("RGB").resize((side, side), BILINEAR, box=((w-s)/2, (h-s)/2, (w+s)/2, (h+s)/2))
PIL decodes JPEGs at full size here (no draft()).

Usage: python3 tools/make_resize_fixtures.py [--out DIR]
Runs itself under a cached venv with Pillow (${SUPERVISION_CACHE:-~/.cache/supervision}/venv-tools),
creating it on first use.
"""

import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toolenv  # noqa: E402

REPO = Path(__file__).resolve().parent.parent




def photo(rng, w, h, noise=6, stripe=7):
    """A photo-like RGB test card: gradient, shapes, fine texture, mild noise."""
    from PIL import Image, ImageDraw

    c0 = [rng.randrange(256) for _ in range(3)]
    c1 = [rng.randrange(256) for _ in range(3)]
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            t = (x / max(w - 1, 1) + y / max(h - 1, 1)) / 2
            n = rng.randrange(-noise, noise + 1) if noise else 0
            px[x, y] = tuple(max(0, min(255, int(a + (b - a) * t) + n)) for a, b in zip(c0, c1))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(5, w // 2 + 6), y0 + rng.randrange(5, h // 2 + 6)
        fill = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            d.ellipse([x0, y0, x1, y1], fill=fill)
        else:
            d.rectangle([x0, y0, x1, y1], fill=fill)
    # thin stripes: detail the antialiasing filter has to handle
    for x in range(0, w, stripe):
        d.line([(x, 0), (x + h // 3, h)], fill=(250, 250, 250), width=1)
    return img


# name, width, height, kind, sides
CASES = [
    ("wide", 200, 120, "jpeg-rgb", [64]),
    ("tall", 90, 161, "jpeg-rgb", [64]),
    ("small", 41, 30, "jpeg-rgb", [64]),  # upscaled
    ("gray", 150, 101, "jpeg-gray", [64]),
    ("cmyk", 121, 90, "jpeg-cmyk", [64]),
    ("big", 520, 347, "jpeg-rgb", [64]),  # large enough for 1/2 and 1/4 DCT scale
    ("rgba", 100, 70, "png-rgba", [64]),
    ("palette", 80, 120, "png-palette", [64]),
    ("square", 300, 281, "png-rgb", [256]),  # the real side; fractional crop offset
]


def make_input(rng, name, w, h, kind, out):
    # little noise on the large cases keeps the committed files small
    small = w * h < 50_000
    img = photo(rng, w, h, noise=6 if small else 0, stripe=7 if small else 29)
    if kind == "jpeg-rgb":
        path = out / (name + ".jpg")
        img.save(path, "JPEG", quality=90)
    elif kind == "jpeg-gray":
        path = out / (name + ".jpg")
        img.convert("L").save(path, "JPEG", quality=90)
    elif kind == "jpeg-cmyk":
        path = out / (name + ".jpg")
        img.convert("CMYK").save(path, "JPEG", quality=90)
    elif kind == "png-rgba":
        path = out / (name + ".png")
        a = img.convert("RGBA")
        alpha = photo(rng, w, h, noise=0).convert("L")
        a.putalpha(alpha)
        a.save(path, "PNG")
    elif kind == "png-palette":
        path = out / (name + ".png")
        img.quantize(colors=64).save(path, "PNG")
    elif kind == "png-rgb":
        path = out / (name + ".png")
        img.save(path, "PNG")
    else:
        raise ValueError(kind)
    return path


def reference(path, side):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        return im.resize((side, side), Image.Resampling.BILINEAR, box=box)


def main():
    toolenv.ensure("venv-tools", ["pillow", "numpy"], probe="PIL")
    import PIL

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "crates" / "sv-image" / "tests" / "fixtures"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20120101)
    lines = ["# input side  (made by tools/make_resize_fixtures.py, Pillow %s)" % PIL.__version__]
    for name, w, h, kind, sides in CASES:
        path = make_input(rng, name, w, h, kind, out)
        for side in sides:
            ref = reference(path, side)
            ref.save(out / ("%s.%d.png" % (name, side)), "PNG", optimize=True)
            lines.append("%s %d" % (path.name, side))
    (out / "fixtures.txt").write_text("\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print("wrote %d cases to %s (%d bytes)" % (len(lines) - 1, out, total))


if __name__ == "__main__":
    main()
