"""Shared parts of the benchmark loaders: the error type, guarded raster reads and the dataset base class.

Every read goes through `read_band`/`read_raster_window`, which turn a missing or unreadable file into a
`BenchmarkDataError` naming the dataset, the sample and the expected path, so a user pointing `--root`
at an incomplete download sees what is missing instead of a rasterio traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio
import rasterio.errors
from rasterio.enums import Resampling
from rasterio.transform import array_bounds
from rasterio.windows import Window
from torch.utils.data import Dataset

Sample = dict[str, Any]
"""Tensors by key (inputs, target), plus `id`, `crs` and `bounds` where the loader knows them."""
Transform = Callable[[Sample], Sample]


class BenchmarkDataError(ValueError):
    """A benchmark file is missing, unreadable or inconsistent; the message names the sample and the file."""


def _reason(error: Exception) -> str:
    """The most specific message of a rasterio error (GDAL's cause when rasterio only says "Read failed")."""
    cause = error.__cause__ or error.__context__
    return f"{error} ({cause})" if cause is not None else str(error)


def resampling_method(name: str) -> Resampling:
    """rasterio's Resampling member called `name` ("bilinear", "average", ...), or a clear error."""
    try:
        return Resampling[name]
    except KeyError:
        valid = ", ".join(m.name for m in Resampling)
        raise BenchmarkDataError(f"unknown resampling {name!r}; use one of: {valid}") from None


def read_raster_window(
    path: Path,
    what: str,
    *,
    indexes: int | list[int] | None = None,
    out_shape: tuple[int, ...] | None = None,
    resampling: Resampling = Resampling.nearest,
    window: Window | None = None,
) -> np.ndarray:
    """Read bands of `path` (optionally a window, optionally resampled to `out_shape`); errors name `what`.

    `what` describes the sample and the layer, e.g. "BigEarthNet patch S2A_..._87_48: band B8A".
    """
    if not path.is_file():
        raise BenchmarkDataError(f"{what} missing (expected {path})")
    try:
        with rasterio.open(path) as src:
            return src.read(indexes, out_shape=out_shape, resampling=resampling, window=window)
    except (rasterio.errors.RasterioError, OSError) as e:
        raise BenchmarkDataError(f"{what} unreadable ({path}): {_reason(e)}") from None


def open_profile(path: Path, what: str) -> dict[str, Any]:
    """The rasterio profile (count, height, width, dtype, crs, transform) of `path`; errors name `what`."""
    if not path.is_file():
        raise BenchmarkDataError(f"{what} missing (expected {path})")
    try:
        with rasterio.open(path) as src:
            return dict(src.profile)
    except (rasterio.errors.RasterioError, OSError) as e:
        raise BenchmarkDataError(f"{what} unreadable ({path}): {_reason(e)}") from None


def read_with_profile(path: Path, what: str) -> tuple[np.ndarray, dict[str, Any]]:
    """All bands of `path` as (C, H, W) with its profile, in one open; errors name `what`."""
    if not path.is_file():
        raise BenchmarkDataError(f"{what} missing (expected {path})")
    try:
        with rasterio.open(path) as src:
            return src.read(), dict(src.profile)
    except (rasterio.errors.RasterioError, OSError) as e:
        raise BenchmarkDataError(f"{what} unreadable ({path}): {_reason(e)}") from None


def georeference(profile: dict[str, Any]) -> dict[str, Any]:
    """A sample's TorchGeo-style georeference from a rasterio profile: `crs` (a string, None if unset) and
    `bounds` (minx, miny, maxx, maxy in that CRS)."""
    crs = profile.get("crs")
    bounds = array_bounds(profile["height"], profile["width"], profile["transform"])
    return {"crs": crs.to_string() if crs else None, "bounds": (bounds[0], bounds[1], bounds[2], bounds[3])}


def require_dir(path: Path, dataset: str, hint: str) -> Path:
    """Return `path` if it is a directory, else a clear error saying what layout was expected."""
    if not path.is_dir():
        raise BenchmarkDataError(f"{dataset}: folder {path} not found; {hint}")
    return path


class BenchmarkDataset(Dataset[Sample]):
    """Base of the benchmark loaders: subclasses index samples in `__init__` and implement `load(index)`.

    Class attributes describe the sample so a fine-tuning loop can be wired without knowing the dataset:
    `task` (a key of msgfm.metrics.PRIMARY_METRIC), `inputs` (sample key -> msgfm sensor name, or
    None where the sensor is not in the registry), `target_key`, `target_sensor` (the sensor of an image
    target when it is not the task's default, msgfm.datasets.tasks.TASK_SPECS), and per-instance
    `band_names` (key -> band names in channel order).
    """

    name: ClassVar[str]
    task: ClassVar[str]
    inputs: ClassVar[Mapping[str, str | None]]
    target_key: ClassVar[str | None]
    target_sensor: ClassVar[str | None] = None
    splits: ClassVar[tuple[str, ...]]

    def __init__(self, root: str | Path, split: str, transforms: Transform | None = None) -> None:
        if split not in self.splits:
            raise BenchmarkDataError(f"{self.name}: unknown split {split!r}; use one of {list(self.splits)}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise BenchmarkDataError(f"{self.name}: root {self.root} is not a directory")
        self.split = split
        self.transforms = transforms
        self.band_names: dict[str, tuple[str, ...]] = {}

    def load(self, index: int) -> Sample:
        """Read sample `index` as a dict of tensors (before transforms)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        """Sample `index` as a dict of tensors, passed through `transforms` when given."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name} {self.split}: index {index} out of range for {len(self)} samples")
        sample = self.load(index % len(self))
        return self.transforms(sample) if self.transforms is not None else sample
