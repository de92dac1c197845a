#!/usr/bin/env python3
"""Write the MAT v5 fixtures that crates/sv-build's devkit reader is checked against.

The ILSVRC2012 devkit's data/meta.mat holds one variable, `synsets`, a 1860x1 MATLAB
struct array (1,000 leaf classes with ILSVRC2012_ID 1..1000, then 860 inner WordNet
nodes with num_children > 0) whose fields are, in this order:

    ILSVRC2012_ID  double scalar          WNID      char, e.g. 'n01440764'
    words          char, the class names  gloss     char, a definition
    num_children   double scalar          children  double row of IDs (empty for leaves)
    wordnet_height double scalar          num_train_images  double scalar

This script writes a small struct array in exactly that layout with scipy.io.savemat
(the same writer family torchvision's reader, scipy.io.loadmat, was made for), both
uncompressed and compressed (MATLAB -v7 files hold their variables zlib-compressed),
plus the expected values as JSON for the Rust test to compare with.

    python3 tools/make_devkit_fixture.py   # writes crates/sv-build/tests/fixtures/
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toolenv  # noqa: E402

toolenv.ensure("venv-scipy", ["numpy", "scipy"], probe="scipy")

import numpy as np  # noqa: E402
import scipy.io  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "sv-build",
                   "tests", "fixtures")

# Leaves first (IDs 1..4 deliberately not in WNID order, as in the real file where
# ID 1 is n02119789 'kit fox'), then two inner nodes. Names with commas and a
# non-ASCII character, as the real `words` have.
SYNSETS = [
    (1, "n02119789", "kit fox, Vulpes macrotis", "small grey fox of southwestern United States", 0, [], 0, 1300),
    (2, "n02100735", "English setter", "an English breed having a plumed tail", 0, [], 0, 1300),
    (3, "n01440764", "tench, Tinca tinca", "freshwater dace-like game fish", 0, [], 0, 1300),
    (4, "n04596742", "wok", "pan with a convex bottom; used for frying in Chinese cooking", 0, [], 0, 1300),
    (5, "n09999999", "Gru\u00dfe, inner node", "an inner node of the hierarchy", 2, [1, 2], 1, 0),
    (6, "n00001740", "entity", "that which is perceived to have its own distinct existence", 3, [5, 3, 4], 2, 0),
]
FIELDS = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
          "wordnet_height", "num_train_images"]


def struct_array():
    dtype = [(f, object) for f in FIELDS]
    arr = np.zeros((len(SYNSETS), 1), dtype=dtype)
    for i, (sid, wnid, words, gloss, nch, children, height, ntrain) in enumerate(SYNSETS):
        arr[i, 0]["ILSVRC2012_ID"] = np.array([[float(sid)]])
        arr[i, 0]["WNID"] = np.array([wnid])
        arr[i, 0]["words"] = np.array([words])
        arr[i, 0]["gloss"] = np.array([gloss])
        arr[i, 0]["num_children"] = np.array([[float(nch)]])
        arr[i, 0]["children"] = np.array([children], dtype=np.float64).reshape(1, len(children))
        arr[i, 0]["wordnet_height"] = np.array([[float(height)]])
        arr[i, 0]["num_train_images"] = np.array([[float(ntrain)]])
    return arr


def main():
    os.makedirs(OUT, exist_ok=True)
    arr = struct_array()
    for name, compress in [("meta_small.mat", False), ("meta_small_compressed.mat", True)]:
        path = os.path.join(OUT, name)
        scipy.io.savemat(path, {"synsets": arr}, do_compression=compress, format="5")
        # Read back as torchvision does, to be sure the layout is the real one's.
        back = scipy.io.loadmat(path, squeeze_me=True)["synsets"]
        got = [(int(s[0]), str(s[1]), str(s[2])) for s in back]
        assert got == [(s[0], s[1], s[2]) for s in SYNSETS], got
        print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")
    expected = [
        {"id": s[0], "wnid": s[1], "words": s[2], "num_children": s[4], "children": s[5]}
        for s in SYNSETS
    ]
    with open(os.path.join(OUT, "meta_small.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
