"""SuperVision from Python: shard datasets, their statistics and the input pipeline.

    import supervision, torch
    loader = supervision.Loader("shards/train", batch_size=128, seed=0)
    for images, labels in loader:            # uint8 NHWC numpy arrays, no copy
        x = torch.from_numpy(images)         # the pipeline's own batch buffer
        ...

- Dataset(path): len, classes, labels, ds[i] -> (HxWx3 uint8 array, label), verify().
- Loader(path, batch_size, ...): batches of (images, labels) from the Rust pipeline,
  with len(), set_epoch(), state_dict() / load_state_dict() (exact mid-epoch resume).
- build_shards(input, output, ...): `supervision shard build`.
- compute_stats(shards, output, ...): `supervision pca compute`.
- ShardError: a damaged dataset (an OSError).

help(supervision.Loader) explains every argument; docs/python.md has the rest.
"""

import sys as _sys

from ._supervision import (
    BatchMemory,
    Dataset,
    Loader,
    LoaderIter,
    ShardError,
    __version__,
    build_shards,
    compute_stats,
)

__all__ = [
    "Dataset",
    "Loader",
    "LoaderIter",
    "BatchMemory",
    "ShardError",
    "build_shards",
    "compute_stats",
    "__version__",
]


def _register_torch():
    """Make Loader an instance of torch.utils.data.IterableDataset once torch is
    loaded, so that DataLoader(loader, batch_size=None) iterates it (DataLoader
    tells iterable datasets from map-style ones by that isinstance check). torch is
    never imported here: Loader() calls this, and so does importing supervision."""
    data = _sys.modules.get("torch.utils.data")
    iterable = getattr(data, "IterableDataset", None)
    if iterable is not None and not issubclass(Loader, iterable):
        iterable.register(Loader)


_register_torch()
