"""Type stubs of the native module (see help() of each object for the details)."""

import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, "os.PathLike[str]"]

__version__: str

class ShardError(OSError):
    """A shard dataset is damaged or inconsistent; the message names the file and record."""

class Dataset:
    """A shard dataset: len(ds), ds[i] -> (image, label), classes, labels, verify()."""

    def __init__(self, path: _Path) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Tuple[npt.NDArray[np.uint8], int]: ...
    @property
    def path(self) -> str: ...
    @property
    def side(self) -> int: ...
    @property
    def codec(self) -> str: ...
    @property
    def split(self) -> str: ...
    @property
    def shards(self) -> int: ...
    @property
    def classes(self) -> List[Tuple[str, str]]: ...
    @property
    def wnids(self) -> List[str]: ...
    @property
    def names(self) -> List[str]: ...
    @property
    def labels(self) -> npt.NDArray[np.int64]: ...
    def verify(self, workers: Optional[int] = None) -> Dict[str, Any]: ...

class BatchMemory:
    """The owner of one batch's buffer: the `base` of the arrays viewing it."""

    @property
    def address(self) -> int: ...
    @property
    def position(self) -> Optional[Tuple[int, int]]: ...

_Batch = Union[
    Tuple[npt.NDArray[Any], npt.NDArray[np.int64]],
    Tuple[npt.NDArray[Any], npt.NDArray[np.int64], Dict[str, Any]],
]

class LoaderIter(Iterator[_Batch]):
    """One epoch of a Loader; dropping it stops the pipeline's threads."""

    def __iter__(self) -> "LoaderIter": ...
    def __next__(self) -> _Batch: ...

class Loader:
    """Batches of (images, labels) numpy arrays from SuperVision's Rust pipeline."""

    def __init__(
        self,
        path: _Path,
        batch_size: int,
        *,
        train: bool = True,
        crop: int = 227,
        flip: bool = True,
        ten_crop: bool = False,
        lighting: Union[None, bool, str, "os.PathLike[str]"] = None,
        alpha: Optional[float] = None,
        lighting_convention: str = "paper",
        stats: Optional[_Path] = None,
        mean: Optional[str] = None,
        std: bool = True,
        output: str = "uint8",
        layout: Optional[str] = None,
        seed: int = 0,
        shuffle: Optional[bool] = None,
        drop_last: Optional[bool] = None,
        workers: Optional[int] = None,
        prefetch: int = 2,
        hold: int = 2,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        verify: bool = False,
        skip_damaged: bool = False,
        release_pages: bool = False,
        with_info: bool = False,
    ) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> LoaderIter: ...
    @property
    def epoch(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def records(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> Dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

def build_shards(
    input: _Path,
    output: _Path,
    *,
    split: str = "train",
    labels: Optional[_Path] = None,
    devkit: Union[None, _Path, Sequence[_Path]] = None,
    part: Optional[str] = None,
    classes_from: Optional[_Path] = None,
    codec: str = "raw",
    quality: int = 90,
    subsampling: str = "4:2:0",
    workers: Optional[int] = None,
    size: int = 256,
    max_shard_mib: int = 1024,
    strict: bool = False,
    max_reject_fraction: Optional[float] = None,
    force: bool = False,
    hash_inputs: bool = False,
) -> Dict[str, Any]: ...
def compute_stats(
    shards: _Path,
    output: _Path,
    *,
    mean_image: Optional[_Path] = None,
    sample: Optional[int] = None,
    workers: Optional[int] = None,
    seed: int = 0,
    verify: bool = True,
) -> Dict[str, Any]: ...
