"""supervision.Loader: the same batches as the Rust pipeline, no copy, exact resume,
the rank split, evaluation crops, torch's DataLoader, and bounded memory."""

import gc
import json
import pickle
import zlib

import numpy as np
import pytest

import supervision
from conftest import CROP, SIDE, run_cli, run_python


def digest(batches):
    """`supervision bench pipeline`'s digest: CRC-32 over each batch's pixels (uint8,
    or float32 little-endian), labels (u32 little-endian) and lighting offsets (f32
    little-endian), in order."""
    crc = 0
    for images, labels, info in batches:
        if images.dtype == np.uint8:
            crc = zlib.crc32(np.ascontiguousarray(images).tobytes(), crc)
        else:
            crc = zlib.crc32(images.astype("<f4").tobytes(), crc)
        crc = zlib.crc32(labels.astype("<u4").tobytes(), crc)
        crc = zlib.crc32(info["lighting"].astype("<f4").tobytes(), crc)
    return f"{crc:08x}"


def bench_digest(shards, batches, *extra):
    out = run_cli(
        "bench", "pipeline", "--shards", shards, "--batch-size", "8", "--batches", batches,
        "--crop", CROP, "--seed", "3", "--workers", "2", "--json", *extra,
    )
    return json.loads(out)["digest"]


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_uint8_batches_equal_the_rust_pipeline(data, codec):
    loader = supervision.Loader(
        data[codec], 8, crop=CROP, seed=3, lighting="imagenet", workers=1, with_info=True
    )
    ours = digest(loader)
    assert ours == bench_digest(data[codec], len(loader))
    # any worker count gives the same batches
    again = supervision.Loader(
        data[codec], 8, crop=CROP, seed=3, lighting="imagenet", workers=3, with_info=True
    )
    assert digest(again) == ours


def test_float32_batches_equal_the_rust_pipeline(data):
    loader = supervision.Loader(
        data["raw"], 8, crop=CROP, seed=3, lighting=data["stats"], mean="channel",
        output="float32", workers=2, with_info=True,
    )
    batches = list(loader)
    assert batches[0][0].dtype == np.float32 and batches[0][0].shape == (8, 3, CROP, CROP)
    ours = digest(batches)
    del batches
    theirs = bench_digest(data["raw"], len(loader), "--output", "f32", "--stats", data["stats"])
    assert ours == theirs
    # a different seed is a different stream (the digest can tell)
    other = supervision.Loader(
        data["raw"], 8, crop=CROP, seed=4, lighting=data["stats"], mean="channel",
        output="float32", with_info=True,
    )
    assert digest(other) != ours


def test_images_are_the_pipelines_buffers(data):
    torch = pytest.importorskip("torch")
    loader = supervision.Loader(data["raw"], 4, crop=CROP, workers=1, prefetch=0, hold=1)
    addresses = set()
    for images, labels in loader:
        assert isinstance(images.base, supervision.BatchMemory)
        assert not images.flags.owndata and images.flags.c_contiguous
        assert images.flags.writeable
        assert images.ctypes.data == images.base.address
        t = torch.from_numpy(images)
        assert t.data_ptr() == images.base.address
        assert t.shape == (4, CROP, CROP, 3) and t.dtype == torch.uint8
        assert labels.dtype == np.int64 and labels.shape == (4,)
        addresses.add(images.base.address)
        del t
    # dropped batches go back to the pool: workers + prefetch + hold buffers serve the
    # whole epoch
    assert len(loader) > 3
    assert len(addresses) <= 1 + 0 + 1


def test_a_kept_batch_survives_the_loader(data):
    loader = supervision.Loader(data["raw"], 4, crop=CROP, workers=1)
    it = iter(loader)
    images, labels = next(it)
    first = images.copy()
    del it, loader
    gc.collect()
    # the array still owns its batch: the memory is intact after the pipeline is gone
    assert np.array_equal(images, first)


def test_state_dict_resume_equals_an_uninterrupted_epoch(data):
    def loader():
        return supervision.Loader(data["jpeg"], 4, crop=CROP, seed=11, lighting="imagenet",
                                  workers=2, with_info=True)

    whole = loader()
    whole.set_epoch(1)
    expected = [(im.copy(), lb.copy(), info["lighting"].copy()) for im, lb, info in whole]
    assert whole.state_dict()["epoch"] == 2 and whole.state_dict()["batch"] == 0

    first = loader()
    first.set_epoch(1)
    got = []
    for i, (im, lb, info) in enumerate(first):
        got.append((im.copy(), lb.copy(), info["lighting"].copy()))
        if i == 2:
            break
    state = first.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 3)
    # the state goes through pickle (torch.save) and json
    state = json.loads(json.dumps(pickle.loads(pickle.dumps(state))))
    del first

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # what Lightning does after loading: keeps the resume point
    for im, lb, info in resumed:
        got.append((im.copy(), lb.copy(), info["lighting"].copy()))
    assert len(got) == len(expected) == len(whole)
    for (a, b, c), (x, y, z) in zip(got, expected):
        assert np.array_equal(a, x) and np.array_equal(b, y) and np.array_equal(c, z)
    assert resumed.epoch == 2


def test_epochs_advance_and_an_abandoned_epoch_restarts(data):
    loader = supervision.Loader(data["raw"], 4, crop=CROP, seed=1, with_info=True)
    e0 = [info["indices"].copy() for _, _, info in loader]
    e1 = [info["indices"].copy() for _, _, info in loader]
    assert loader.epoch == 2
    assert not all(np.array_equal(a, b) for a, b in zip(e0, e1))
    loader.set_epoch(0)
    for _, _, info in loader:
        first = info["indices"].copy()
        break
    again = next(iter(loader))[2]["indices"]
    assert np.array_equal(first, e0[0]) and np.array_equal(again, e0[0])


def test_load_state_dict_refuses_other_settings(data):
    a = supervision.Loader(data["raw"], 4, crop=CROP, seed=1)
    state = a.state_dict()
    b = supervision.Loader(data["raw"], 4, crop=CROP, seed=2)
    with pytest.raises(ValueError, match="seed=1"):
        b.load_state_dict(state)
    with pytest.raises(ValueError, match="batch 99"):
        a.load_state_dict(dict(state, batch=99))
    with pytest.raises(ValueError, match="version"):
        a.load_state_dict({"epoch": 0})


def test_load_state_dict_ends_the_running_iteration(data):
    loader = supervision.Loader(data["raw"], 4, crop=CROP)
    it = iter(loader)
    next(it)
    loader.load_state_dict(loader.state_dict())
    with pytest.raises(RuntimeError, match="superseded"):
        next(it)


def rank_indices(path, world, train, **kw):
    out = []
    for rank in range(world):
        loader = supervision.Loader(path, 4, crop=CROP, train=train, rank=rank,
                                    world_size=world, with_info=True, **kw)
        idx = [info["indices"] for _, _, info in loader]
        assert len(idx) == len(loader)
        out.append(np.concatenate(idx) if idx else np.zeros(0, np.int64))
    return out


def test_ranks_are_disjoint_and_cover_the_epoch(data):
    n = len(supervision.Dataset(data["raw"]))
    # evaluation: every record exactly once over the ranks (the padding is cut off)
    ranks = rank_indices(data["raw"], 3, train=False)
    together = np.concatenate(ranks)
    assert sorted(together.tolist()) == list(range(n))
    # training: disjoint, the same number of full batches on every rank
    ranks = rank_indices(data["raw"], 3, train=True, seed=5)
    sizes = {len(r) for r in ranks}
    assert len(sizes) == 1 and sizes.pop() == (n // 12) * 4
    together = np.concatenate(ranks)
    assert len(set(together.tolist())) == len(together)
    # the split is the Rust sampler's: sample j of the epoch's order goes to rank j % 3
    whole = supervision.Loader(data["raw"], 12, crop=CROP, seed=5, with_info=True)
    for b, (_, _, info) in enumerate(whole):
        for r in range(3):
            assert np.array_equal(info["indices"][r::3], ranks[r][b * 4:(b + 1) * 4])


def test_rank_defaults_come_from_the_launcher_environment(data):
    code = (
        "import supervision\n"
        f"l = supervision.Loader({str(data['raw'])!r}, 2, crop={CROP})\n"
        "print(l.rank, l.world_size)\n"
    )
    clean = {"RANK": "", "WORLD_SIZE": "", "SLURM_PROCID": "", "SLURM_NTASKS": "",
             "SLURM_STEP_NUM_TASKS": ""}
    for env, expect in [
        ({"RANK": "1", "WORLD_SIZE": "3"}, "1 3"),
        ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}, "2 4"),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2"}, "1 2"),
        ({}, "0 1"),
    ]:
        proc = run_python(code, env={**clean, **env})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == expect.split()
    proc = run_python(code, env={**clean, "RANK": "one", "WORLD_SIZE": "2"})
    assert proc.returncode != 0 and "ValueError" in proc.stderr and "RANK" in proc.stderr


def test_centre_and_ten_crops_are_the_records(data):
    ds = supervision.Dataset(data["val"])
    o = (SIDE - CROP) // 2
    centre = supervision.Loader(data["val"], 4, crop=CROP, train=False, with_info=True)
    seen = 0
    for images, labels, info in centre:
        for k, i in enumerate(info["indices"]):
            img, label = ds[int(i)]
            assert np.array_equal(images[k], img[o:o + CROP, o:o + CROP])
            assert labels[k] == label
            seen += 1
    assert seen == len(ds)

    ten = supervision.Loader(data["val"], 4, crop=CROP, train=False, ten_crop=True,
                             layout="NCHW", with_info=True)
    images, labels, info = next(iter(ten))
    assert images.shape == (4, 10, 3, CROP, CROP)
    img = ds[int(info["indices"][0])][0].transpose(2, 0, 1)
    far = SIDE - CROP
    assert np.array_equal(images[0, 0], img[:, :CROP, :CROP])
    assert np.array_equal(images[0, 3], img[:, far:, far:])
    assert np.array_equal(images[0, 4], img[:, o:o + CROP, o:o + CROP])
    assert np.array_equal(images[0, 9], img[:, o:o + CROP, o:o + CROP][:, :, ::-1])
    assert info["flip"].tolist()[:10] == [False] * 5 + [True] * 5


def test_mean_image_and_std(data):
    stats = json.loads(data["stats"].read_text())
    plain = supervision.Loader(data["raw"], 4, crop=CROP, train=False, output="float32")
    channel = supervision.Loader(data["raw"], 4, crop=CROP, train=False, output="float32",
                                 stats=data["stats"], mean="channel")
    image = supervision.Loader(data["raw"], 4, crop=CROP, train=False, output="float32",
                               stats=data["stats"], mean="image", std=False)
    x = next(iter(plain))[0]
    mean = np.array(stats["scale_255"]["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.array(stats["scale_255"]["std"], np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(next(iter(channel))[0], (x - mean) / std, rtol=1e-5, atol=1e-4)
    o = (SIDE - CROP) // 2
    mean_image = np.load(data["mean_image"])[:, o:o + CROP, o:o + CROP]
    np.testing.assert_allclose(next(iter(image))[0], x - mean_image, rtol=1e-5, atol=1e-3)


def test_torch_dataloader_iterates_it(data):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    loader = supervision.Loader(data["raw"], 4, crop=CROP, seed=2)
    direct = [(im.copy(), lb.copy()) for im, lb in loader]
    loader.set_epoch(0)
    dl = DataLoader(loader, batch_size=None, num_workers=0)
    assert len(dl) == len(loader)
    n = 0
    for (a, b), (x, y) in zip(dl, direct):
        assert isinstance(a, torch.Tensor) and a.dtype == torch.uint8
        assert np.array_equal(a.numpy(), x) and np.array_equal(b.numpy(), y)
        n += 1
    assert n == len(direct)


def test_keeping_every_batch_is_an_error_that_says_what_to_do(data):
    loader = supervision.Loader(data["raw"], 2, crop=CROP, workers=1, prefetch=0, hold=1)
    assert len(loader) > 3
    with pytest.raises(RuntimeError, match="hold="):
        list(loader)
    # copies are fine
    assert len([im.copy() for im, _ in loader]) == len(loader)


def test_rss_stays_flat_over_many_epochs(data):
    torch = pytest.importorskip("torch")

    def rss_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    loader = supervision.Loader(data["jpeg"], 4, crop=CROP, workers=2, lighting="imagenet",
                                output="float32", mean="imagenet")
    samples = []
    for epoch in range(100):
        for images, labels in loader:
            t = torch.from_numpy(images)
            assert t.shape[0] == 4
        if epoch in (10, 99):
            gc.collect()
            samples.append(rss_kib())
    # each epoch starts and stops a pipeline (threads, runtime, buffers) and hands out
    # its batches as arrays: nothing of it may stay behind
    assert samples[1] - samples[0] < 4096, samples
