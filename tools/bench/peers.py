#!/usr/bin/env python3
"""`supervision bench pipeline` next to the usual Python input pipelines, on the same
images and the same cores, in one run.

Peers (batch 128, workers = cores, random 227 crop + horizontal flip):
  (a) torch DataLoader over 256px JPEG files: torchvision RandomCrop +
      RandomHorizontalFlip + ToTensor + Normalize (float32 NCHW batches).
  (b) torch DataLoader over a numpy memmap of the raw 256 records (the raw shard
      file itself, offset 4096, shape (n, 256, 256, 3)) with numpy crop + flip
      (uint8 NHWC batches, the same form as supervision's u8 output).
  (c) NVIDIA DALI CPU pipeline on the same JPEG files: file reader, CPU decoder,
      crop_mirror_normalize with a uniform random crop position and a coin-flip
      mirror (float32 CHW). Skipped, with the reason, when DALI does not import.
  (d) the same DALI pipeline on supervision's own JPEG records: each payload of the
      jpeg shard set written out unchanged as a .jpg file, so (d) and supervision's
      jpeg rows decode the same bytes and the ratio compares decoders and pipelines,
      not encoders.
supervision runs raw -> u8, raw -> f32, jpeg -> u8 and jpeg -> f32 (`--no-digest`,
so the consumer does no extra work the peers do not do either).

Every side first runs --warmup batches (workers start, page cache and memory maps
warm), then --batches timed batches; images/s = timed images / timed seconds.
With --rounds N every side runs N times, interleaved (round 1: every side, round 2:
every side, ...); the table gives each side's median and range, and each ratio is
taken within a round and reported as the median (and range) of the N ratios, so a
slow spell of a shared machine does not land on one side only.

Data: unless --shards/--jpeg-shards/--jpeg-dir are given, `supervision synth`
writes --images training images, `supervision shard build` makes a raw and a jpeg
(quality 90, --subsampling, default 4:2:0) shard set from them, and the raw records are written out as 256px
JPEG files (PIL, quality 90) in class folders for (a) and (c). All of it is cached
under ${SUPERVISION_CACHE:-~/.cache/supervision}/bench-peers-<images>.

Python packages live in a cached venv, ${SUPERVISION_CACHE}/venv-peers (made on
first use: torch 2.11.0 is borrowed from venv-torch-2.11.0 when that exists, else
installed; then torchvision==0.26.0, numpy, pillow and, if the registry serves it,
nvidia-dali-cuda130).

Usage:
  cargo build --release -p sv-cli
  tools/bench/peers.py [--images 2000] [--batches 30] [--warmup 3] [--workers N]
                       [--rounds 1] [--binary target/release/supervision] [--json FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CACHE = os.environ.get("SUPERVISION_CACHE", os.path.expanduser("~/.cache/supervision"))
VENV = os.path.join(CACHE, "venv-peers")
TORCH_VENV = os.path.join(CACHE, "venv-torch-2.11.0")
BATCH = 128
CROP = 227
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def ensure_venv():
    """Create or reuse the venv, then re-exec this script inside it."""
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    marker = os.path.join(VENV, ".ready")
    if not os.path.exists(marker):
        print(f"[peers] preparing {VENV} (first run only)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        pip = [py, "-m", "pip", "install", "--quiet"]
        if os.path.exists(os.path.join(TORCH_VENV, "bin", "python")):
            site = subprocess.run(
                [os.path.join(TORCH_VENV, "bin", "python"), "-c",
                 "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True, capture_output=True, text=True).stdout.strip()
            purelib = subprocess.run(
                [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True, capture_output=True, text=True).stdout.strip()
            with open(os.path.join(purelib, "_torch_venv.pth"), "w") as f:
                f.write(site + "\n")
        else:
            subprocess.run(pip + ["torch==2.11.0", "numpy", "pillow"], check=True)
        subprocess.run(pip + ["torchvision==0.26.0"], check=True)
        dali = subprocess.run(pip + ["nvidia-dali-cuda130"])
        if dali.returncode != 0:
            print("[peers] nvidia-dali-cuda130 did not install; peer (c) will be skipped",
                  file=sys.stderr)
        open(marker, "w").close()
    os.execv(py, [py] + sys.argv)


def run(cmd, **kw):
    print("[peers] $ " + " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


def make_data(binary, images, subsampling):
    import numpy as np
    from PIL import Image
    base = os.path.join(CACHE, f"bench-peers-{images}")
    tree, raw, jdir = (os.path.join(base, n) for n in ("synth", "raw", "jpeg-files"))
    jpeg = os.path.join(base, "jpeg-" + subsampling.replace(":", ""))
    done = os.path.join(base, ".done")
    if os.path.exists(done) and subprocess.run(
            [binary, "shard", "inspect", raw], capture_output=True).returncode != 0:
        # written by an older supervision whose format this one no longer reads
        print(f"[peers] {raw} is not readable by this binary; regenerating {base}",
              file=sys.stderr)
        import shutil
        shutil.rmtree(base)
    if os.path.exists(done):
        if not os.path.exists(os.path.join(jpeg, "manifest.json")):
            run([binary, "shard", "build", "--input", train_folder(tree), "--output", jpeg,
                 "--codec", "jpeg", "--quality", "90", "--subsampling", subsampling, "--force"])
        return raw, jpeg, jdir
    os.makedirs(base, exist_ok=True)
    classes = 10
    per_class = max(1, images // classes)
    run([binary, "synth", "--output", tree, "--classes", str(classes),
         "--per-class", str(per_class), "--val-per-class", "1", "--force"])
    train = train_folder(tree)
    run([binary, "shard", "build", "--input", train, "--output", raw, "--codec", "raw", "--force"])
    run([binary, "shard", "build", "--input", train, "--output", jpeg, "--codec", "jpeg",
         "--quality", "90", "--subsampling", subsampling, "--force"])
    # 256px JPEG files of exactly the raw records, in class folders
    with open(os.path.join(raw, "manifest.json")) as f:
        manifest = json.load(f)
    side = manifest["side"]
    for shard in manifest["shards"]:
        path = os.path.join(raw, shard["name"])
        n = shard["records"]
        arr = np.memmap(path, np.uint8, "r", offset=4096, shape=(n, side, side, 3))
        labels = read_labels(path, n)
        for i in range(n):
            d = os.path.join(jdir, f"{labels[i]:04d}")
            os.makedirs(d, exist_ok=True)
            Image.fromarray(np.asarray(arr[i])).save(
                os.path.join(d, f"{shard['name']}-{i:06d}.jpg"), quality=90)
    open(done, "w").close()
    return raw, jpeg, jdir


def train_folder(tree):
    train = os.path.join(tree, "train")
    if not os.path.isdir(train):
        # layouts differ between synth versions: find the folder of class folders
        for dirpath, dirnames, _ in os.walk(tree):
            if os.path.basename(dirpath) == "train" and dirnames:
                return dirpath
    return train


def payload_files(jpeg):
    """Write every payload of a jpeg shard set unchanged as <jpeg>-files/<label>/*.jpg
    (once); the folder."""
    out = jpeg.rstrip("/") + "-files"
    done = os.path.join(out, ".done")
    if os.path.exists(done):
        return out
    with open(os.path.join(jpeg, "manifest.json")) as f:
        manifest = json.load(f)
    for shard in manifest["shards"]:
        path = os.path.join(jpeg, shard["name"])
        for i, (offset, length, label) in enumerate(read_index(path, shard["records"])):
            d = os.path.join(out, f"{label:04d}")
            os.makedirs(d, exist_ok=True)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(length)
            with open(os.path.join(d, f"{shard['name']}-{i:06d}.jpg"), "wb") as f:
                f.write(data)
    open(done, "w").close()
    return out


def read_index(path, n):
    """(offset, length, label) per record from a shard's index (header field at 40:
    index offset; 24-byte entries: u64 offset, u32 length, u32 label, u32 crc)."""
    import struct
    with open(path, "rb") as f:
        header = f.read(64)
        (index_offset,) = struct.unpack_from("<Q", header, 40)
        f.seek(index_offset)
        index = f.read(24 * n)
    return [struct.unpack_from("<QII", index, 24 * i) for i in range(n)]


def read_labels(path, n):
    """Labels from a shard's index (header field at 40: index offset; 24-byte entries
    with the label at byte 12)."""
    import struct
    with open(path, "rb") as f:
        header = f.read(64)
        (index_offset,) = struct.unpack_from("<Q", header, 40)
        f.seek(index_offset)
        index = f.read(24 * n)
    return [struct.unpack_from("<I", index, 24 * i + 12)[0] for i in range(n)]


def timed(batches, warmup, it):
    """Pull warmup batches, then time `batches` more; returns images/s."""
    for _ in range(warmup):
        next(it)
    images = 0
    t = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        images += b
    return images / (time.perf_counter() - t)


def cycle(loader, count):
    while True:
        for b in loader:
            yield count(b)


def peer_a(jdir, workers, batches, warmup):
    import torch
    import torchvision
    from torchvision import transforms as T
    tf = T.Compose([T.RandomCrop(CROP), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(MEAN, STD)])
    ds = torchvision.datasets.ImageFolder(jdir, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         persistent_workers=True)
    return timed(batches, warmup, cycle(loader, lambda b: b[0].shape[0]))


class MemmapCrops:
    """Raw records through np.memmap, numpy random crop + flip, uint8 HWC."""

    def __init__(self, raw):
        import numpy as np
        with open(os.path.join(raw, "manifest.json")) as f:
            m = json.load(f)
        self.side = m["side"]
        self.parts = []
        for s in m["shards"]:
            path = os.path.join(raw, s["name"])
            self.parts.append((path, s["records"], read_labels(path, s["records"])))
        self.maps = None
        self.index = [(p, i) for p, (_, n, _) in enumerate(self.parts) for i in range(n)]
        self.np = np

    def __len__(self):
        return len(self.index)

    def __getitem__(self, k):
        np = self.np
        if self.maps is None:  # opened in the worker process
            self.maps = [np.memmap(p, np.uint8, "r", offset=4096, shape=(n, self.side, self.side, 3))
                         for p, n, _ in self.parts]
        p, i = self.index[k]
        x = np.random.randint(0, self.side - CROP + 1)
        y = np.random.randint(0, self.side - CROP + 1)
        img = self.maps[p][i, y:y + CROP, x:x + CROP]
        if np.random.rand() < 0.5:
            img = img[:, ::-1]
        return np.ascontiguousarray(img), self.parts[p][2][i]


def peer_b(raw, workers, batches, warmup):
    import torch
    loader = torch.utils.data.DataLoader(MemmapCrops(raw), batch_size=BATCH, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         persistent_workers=True)
    return timed(batches, warmup, cycle(loader, lambda b: b[0].shape[0]))


def peer_c(jdir, workers, batches, warmup):
    try:
        from nvidia.dali import fn, pipeline_def, types
    except Exception as e:  # noqa: BLE001 - any import failure means no DALI here
        return None, f"DALI unavailable: {e}"

    @pipeline_def(batch_size=BATCH, num_threads=workers, device_id=None, seed=1)
    def pipe():
        jpegs, labels = fn.readers.file(file_root=jdir, random_shuffle=True, name="r")
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        out = fn.crop_mirror_normalize(
            images, crop=(CROP, CROP),
            crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
            crop_pos_y=fn.random.uniform(range=(0.0, 1.0)),
            mirror=fn.random.coin_flip(probability=0.5),
            mean=[m * 255 for m in MEAN], std=[s * 255 for s in STD],
            dtype=types.FLOAT, output_layout="CHW")
        return out, labels

    try:
        p = pipe()
        p.build()

        def it():
            while True:
                out, _ = p.run()
                yield len(out)
        return timed(batches, warmup, it()), None
    except Exception as e:  # noqa: BLE001
        return None, f"DALI failed: {e}"


def ours(binary, shards, output, workers, batches, warmup):
    out = run([binary, "bench", "pipeline", "--shards", shards, "--batch-size", str(BATCH),
               "--workers", str(workers), "--batches", str(batches), "--warmup", str(warmup),
               "--output", output, "--crop", str(CROP), "--no-digest", "--json"],
              capture_output=True, text=True).stdout
    return json.loads(out)


def one_round(args, raw, jpeg, jdir, skip, notes):
    """Every side once: images/s by name."""
    w, n, wu = args.workers, args.batches, args.warmup
    res = {}
    for form, shards in (("raw u8", raw), ("raw f32", raw), ("jpeg u8", jpeg), ("jpeg f32", jpeg)):
        output = form.split()[1]
        r = ours(args.binary, shards, output, w, n, wu)
        res[f"supervision {form}"] = r["images_per_s"]
    if "a" not in skip:
        res["peer a: torchvision jpeg files"] = peer_a(jdir, w, n, wu)
    if "b" not in skip:
        res["peer b: numpy memmap raw"] = peer_b(raw, w, n, wu)
    dali = (("c", "peer c: DALI cpu jpeg files", lambda: jdir),
            ("d", "peer d: DALI cpu our jpeg bytes", lambda: payload_files(jpeg)))
    for letter, name, root in dali:
        if letter in skip:
            continue
        v, why = peer_c(root(), w, n, wu)
        if v is not None:
            res[name] = v
        elif why not in notes:
            notes.append(why)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "supervision"))
    ap.add_argument("--shards", help="raw shard set (else generated)")
    ap.add_argument("--jpeg-shards", help="jpeg shard set of the same images")
    ap.add_argument("--jpeg-dir", help="the same images as 256px JPEG files in class folders")
    ap.add_argument("--subsampling", default="4:2:0", choices=["4:2:0", "4:4:4"],
                    help="chroma subsampling of the generated jpeg shard set")
    ap.add_argument("--skip", default="", help="comma-separated peers to skip: a,b,c,d")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every side this many times, interleaved; report medians "
                         "(and the spread) of the images/s and of each round's ratios")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    ensure_venv()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: run `cargo build --release -p sv-cli` first")
    if args.shards and args.jpeg_shards and args.jpeg_dir:
        raw, jpeg, jdir = args.shards, args.jpeg_shards, args.jpeg_dir
    else:
        raw, jpeg, jdir = make_data(args.binary, args.images, args.subsampling)
    w, n, wu = args.workers, args.batches, args.warmup
    skip = set(args.skip.split(","))
    res = {"workers": w, "batch_size": BATCH, "batches": n, "warmup": wu, "crop": CROP,
           "rounds": args.rounds, "jpeg_shards": jpeg, "load_average": os.getloadavg()[0]}
    notes = []
    # Every round runs every side once, in the same order, so a slow spell of a shared
    # machine lands on neighbouring measurements; each ratio is taken within a round.
    rounds = []
    for k in range(args.rounds):
        if args.rounds > 1:
            print(f"[peers] round {k + 1} of {args.rounds}", file=sys.stderr)
        rounds.append(one_round(args, raw, jpeg, jdir, skip, notes))
    keys = [k for k in rounds[0] if all(k in r for r in rounds)]
    for key in keys:
        res[key] = statistics.median(r[key] for r in rounds)
    if args.rounds > 1:
        res["per_round"] = rounds
    print(f"\nimages/s, batch {BATCH}, {w} workers, crop {CROP}, {n} timed batches after {wu}"
          + (f"; median of {args.rounds} rounds (min - max)" if args.rounds > 1 else ""))
    for key in keys:
        vals = [r[key] for r in rounds]
        spread = f"  ({min(vals):.0f} - {max(vals):.0f})" if args.rounds > 1 else ""
        print(f"  {key:<34} {res[key]:>10.0f}{spread}")
    pairs = [("supervision raw u8", "peer b: numpy memmap raw"),
             ("supervision raw u8", "peer a: torchvision jpeg files"),
             ("supervision jpeg u8", "peer d: DALI cpu our jpeg bytes"),
             ("supervision jpeg f32", "peer d: DALI cpu our jpeg bytes"),
             ("supervision jpeg u8", "peer c: DALI cpu jpeg files"),
             ("supervision jpeg f32", "peer c: DALI cpu jpeg files"),
             ("supervision jpeg f32", "peer a: torchvision jpeg files"),
             ("peer c: DALI cpu jpeg files", "peer a: torchvision jpeg files")]
    print("ratios" + (" (median of the rounds' ratios, min - max):" if args.rounds > 1 else ":"))
    ratios = {}
    for x, y in pairs:
        if x in keys and y in keys:
            per = [r[x] / r[y] for r in rounds]
            ratios[f"{x} / {y}"] = statistics.median(per)
            spread = f"  ({min(per):.2f}x - {max(per):.2f}x)" if args.rounds > 1 else ""
            print(f"  {x} / {y}: {statistics.median(per):.2f}x{spread}")
    res["ratios"] = ratios
    for note in notes:
        print("note: " + note)
    res["notes"] = notes
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
