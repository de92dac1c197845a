"""supervision.Dataset, build_shards and compute_stats: the records, the classes,
and the same files and statistics as the CLI's `shard build` and `pca compute`."""

import json

import numpy as np

import supervision
from conftest import CROP, SIDE, run_cli


def test_dataset_records_classes_and_labels(data):
    raw = supervision.Dataset(data["raw"])
    jpeg = supervision.Dataset(data["jpeg"])
    assert len(raw) == len(jpeg) > 30
    assert raw.side == SIDE and raw.codec == "raw" and jpeg.codec == "jpeg"
    assert raw.split == "train" and supervision.Dataset(data["val"]).split == "val"
    assert len(raw.classes) == 3 and raw.wnids == [w for w, _ in raw.classes]
    assert raw.names == [n for _, n in raw.classes]
    labels = raw.labels
    assert labels.dtype == np.int64 and labels.shape == (len(raw),)
    assert set(labels.tolist()) == {0, 1, 2}
    for i in (0, 7, len(raw) - 1, -1):
        image, label = raw[i]
        assert image.shape == (SIDE, SIDE, 3) and image.dtype == np.uint8
        assert label == labels[i]
        decoded, jlabel = jpeg[i]
        assert jlabel == label
        # JPEG at quality 90 is close to the raw pixels, not equal
        diff = np.abs(decoded.astype(int) - image.astype(int)).mean()
        assert 0 < diff < 12
        image[:] = 0  # its own memory: the dataset is not changed
        assert raw[i][0].any()
    # the raw shard read as a plain array gives the same pixels (the format's promise)
    manifest = json.loads((data["raw"] / "manifest.json").read_text())
    first = manifest["shards"][0]
    mm = np.memmap(data["raw"] / first["name"], np.uint8, mode="r", offset=4096,
                   shape=(first["records"], SIDE, SIDE, 3))
    assert np.array_equal(mm[3], raw[3][0])
    report = raw.verify(workers=2)
    assert report["records"] == len(raw) and report["shards"] == raw.shards


def test_jpeg_loader_decodes_as_the_dataset(data):
    ds = supervision.Dataset(data["jpeg"])
    o = (SIDE - CROP) // 2
    loader = supervision.Loader(data["jpeg"], 5, crop=CROP, train=False, with_info=True)
    for images, labels, info in loader:
        for k, i in enumerate(info["indices"]):
            image, label = ds[int(i)]
            assert np.array_equal(images[k], image[o:o + CROP, o:o + CROP])
            assert labels[k] == label


def test_build_shards_writes_what_the_cli_writes(tmp_path, data):
    src = data["root"] / "synth" / "train"
    summary = supervision.build_shards(src, tmp_path / "py", size=SIDE, codec="jpeg",
                                       quality=80, workers=1)
    run_cli("shard", "build", "--input", src, "--output", tmp_path / "cli", "--size", SIDE,
            "--codec", "jpeg", "--quality", "80", "--workers", "2")
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert json.loads((tmp_path / "py" / "manifest.json").read_text()) == manifest
    for shard in manifest["shards"]:
        assert (tmp_path / "py" / shard["name"]).read_bytes() == (
            tmp_path / "cli" / shard["name"]).read_bytes()
    assert summary["records"] == manifest["records"] and summary["classes"] == 3
    assert summary["shards"] == len(manifest["shards"]) and summary["codec"] == "jpeg"
    assert summary["inputs"] == summary["records"] + len(summary["rejects"])
    assert summary["up_to_date"] is False
    # a second build of the same inputs finds the output up to date
    again = supervision.build_shards(src, tmp_path / "py", size=SIDE, codec="jpeg",
                                     quality=80, workers=1)
    assert again["up_to_date"] is True and again["records"] == summary["records"]


def test_compute_stats_equals_the_cli(tmp_path, data):
    ours = supervision.compute_stats(data["raw"], tmp_path / "py.json", workers=1)
    run_cli("pca", "compute", "--shards", data["raw"], "--output", tmp_path / "cli.json",
            "--workers", "2")
    cli = json.loads((tmp_path / "cli.json").read_text())
    assert json.loads((tmp_path / "py.json").read_text()) == cli
    assert ours == cli
    assert ours["images"] == len(supervision.Dataset(data["raw"]))
    assert ours["verified"] is True and ours["mean_image"] is None
    sample = supervision.compute_stats(data["raw"], tmp_path / "s.json", sample=10, seed=3,
                                       verify=False)
    assert sample["images"] == 10 and sample["sample"] == {"requested": 10, "seed": 3}
