"""The chip store: one memory-mapped .npy array per sensor, built for fast random reads in training.

Layout of `data/chips/` (written by `msgfm pair`, indexed by `data/manifest.parquet`):

- `{sensor}.npy`: (N, C, H, W) pixels in physical units and the sensor's native dtype (S2 uint16
  reflectance x 10000, S1 float32 dB, RGB uint8, DSM float32 metres), bands in registry order
  (`index.json` lists them). Nodata pixels are filled with the band's registry mean (relative
  bands, DSM height: the chip's own valid mean), so the normalised value there is 0 and every
  value is finite; the mask says where they are.
- `{sensor}_mask.npy`: (N, H, W) uint8: 0 valid, 1 cloud, 2 cloud shadow (S2 only), 255 nodata.
- `labels_{grid}.npy`: (L, H, W) uint8 ESA WorldCover codes (0 unknown) per chip position on the
  10 m grid (`s10`) and the fine grid (`fine`); chips of any sensor or date at the same position
  share a label chip (manifest column `label_index`).
- `index.json`: chip size, units, per array its file, shape, dtype and band names, and the SHA-256
  of the `data/manifest.parquet` written with the store (`manifest_sha256`): `pair` swaps the store
  in just before the manifest, and readers (`open_accepted`, the pairs gate) refuse a manifest whose
  hash differs, so a kill between the two writes is never read as a consistent pair.

Memory-mapped .npy was chosen over zarr because a chip read is then one contiguous slice of a
file the page cache keeps hot, with no decompression (benchmarks/bench_chipstore.py measures it).
The writer preallocates every array on disk and fills it chip by chip, so building the store never
holds more than one raster in memory; it builds in a temporary folder renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msgfm.decisions import accepted_ids
from msgfm.geo.io import atomic_write_json, sha256_file
from msgfm.sensors import get_sensor

STORE_VERSION = 1
MASK_VALID, MASK_CLOUD, MASK_SHADOW, MASK_NODATA = 0, 1, 2, 255
MANIFEST_HASH_KEY = "manifest_sha256"
"""index.json key holding the SHA-256 of the manifest written with the store."""


class ChipStoreError(OSError):
    """The store is missing, incomplete or inconsistent; the message names the file."""


@dataclass(frozen=True)
class SensorArray:
    """Shape and contents of one sensor's pixel array in the store."""

    sensor: str
    count: int
    bands: tuple[str, ...]
    dtype: str


class ChipStoreWriter:
    """Preallocates the store's arrays in a temporary folder and fills them; `commit` moves it into place."""

    def __init__(
        self,
        root: str | Path,
        chip_px: int,
        sensors: list[SensorArray],
        label_counts: dict[str, int],
    ):
        self.root = Path(root)
        self.chip_px = chip_px
        self.tmp = self.root.parent / f".{self.root.name}.partial"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.specs = {s.sensor: s for s in sensors}
        self.pixels: dict[str, np.memmap] = {}
        self.masks: dict[str, np.memmap] = {}
        self.labels: dict[str, np.memmap] = {}
        self.fill: dict[str, np.ndarray] = {}
        for s in sensors:
            shape = (s.count, len(s.bands), chip_px, chip_px)
            self.pixels[s.sensor] = np.lib.format.open_memmap(self.tmp / f"{s.sensor}.npy", "w+", s.dtype, shape)
            self.masks[s.sensor] = np.lib.format.open_memmap(
                self.tmp / f"{s.sensor}_mask.npy", "w+", np.uint8, (s.count, chip_px, chip_px)
            )
            mean, _ = get_sensor(s.sensor).stats(s.bands)
            self.fill[s.sensor] = mean.astype(s.dtype)
        for grid, count in label_counts.items():
            self.labels[grid] = np.lib.format.open_memmap(
                self.tmp / f"labels_{grid}.npy", "w+", np.uint8, (count, chip_px, chip_px)
            )

    def write(self, sensor: str, index: int, pixels: np.ndarray, mask: np.ndarray) -> None:
        """Store one chip: (C, H, W) physical values and its (H, W) mask; nodata pixels get the band mean."""
        nodata = mask == MASK_NODATA
        fill = self.fill[sensor].astype(np.float64)
        relative = [i for i, b in enumerate(self.specs[sensor].bands) if get_sensor(sensor).band(b).relative]
        if relative and (~nodata).any():  # relative bands (DSM): fill with the chip's own valid mean
            fill[relative] = pixels[relative][:, ~nodata].mean(axis=1)
        values = np.where(nodata[None], fill[:, None, None], pixels)
        self.pixels[sensor][index] = values.astype(self.specs[sensor].dtype)
        self.masks[sensor][index] = mask

    def write_label(self, grid: str, index: int, label: np.ndarray) -> None:
        """Store one (H, W) land-cover label chip."""
        self.labels[grid][index] = label

    def commit(self, extra: dict[str, Any] | None = None) -> Path:
        """Flush, write index.json and replace `root` with the new store."""
        arrays: dict[str, Any] = {}
        for group in (self.pixels, self.masks, self.labels):
            for arr in group.values():
                arr.flush()
                file = Path(arr.filename).name
                arrays[file[: -len(".npy")]] = {"file": file, "shape": list(arr.shape), "dtype": arr.dtype.name}
        index = {
            "version": STORE_VERSION,
            "chip_px": self.chip_px,
            "units": "physical (sensor's native dtype; normalise with msgfm.sensors)",
            "sensors": {
                s: {"bands": list(spec.bands), "count": spec.count, "dtype": spec.dtype}
                for s, spec in self.specs.items()
            },
            "label_grids": {g: int(a.shape[0]) for g, a in self.labels.items()},
            "arrays": arrays,
            **(extra or {}),
        }
        self.pixels.clear()
        self.masks.clear()
        self.labels.clear()
        atomic_write_json(self.tmp / "index.json", index)
        old = self.root.parent / f".{self.root.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if self.root.exists():
            os.replace(self.root, old)
        os.replace(self.tmp, self.root)
        shutil.rmtree(old, ignore_errors=True)
        return self.root


class ChipStore:
    """Random access to the chips by sensor and store index (the manifest's `store_index`).

    >>> store = ChipStore("data/chips")
    >>> x = store.read("s2", [3, 17, 42])            # (3, 12, 64, 64) float32, normalised
    >>> y = store.read("s1", manifest.partner_index)  # the paired S1 chips, same order
    >>> seg = store.labels("fine", rgb_rows.label_index)  # (B, 64, 64) uint8 WorldCover codes
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise ChipStoreError(f"{index_path}: no chip store here (run `msgfm pair` first)")
        self.index = json.loads(index_path.read_text())
        if self.index.get("version") != STORE_VERSION:
            raise ChipStoreError(f"{index_path}: store version {self.index.get('version')}, expected {STORE_VERSION}")
        self.chip_px: int = int(self.index["chip_px"])
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(self.index["sensors"])

    def bands(self, sensor: str) -> tuple[str, ...]:
        """Band names of `sensor`'s chips, in channel order."""
        self._check_sensor(sensor)
        return tuple(self.index["sensors"][sensor]["bands"])

    def count(self, sensor: str) -> int:
        self._check_sensor(sensor)
        return int(self.index["sensors"][sensor]["count"])

    def _check_sensor(self, sensor: str) -> None:
        if sensor not in self.index["sensors"]:
            raise KeyError(f"{self.root}: the store has no sensor {sensor!r}; it has {list(self.index['sensors'])}")

    def array(self, name: str) -> np.ndarray:
        """The memory-mapped array `name` (e.g. "s2", "s2_mask", "labels_s10"), opened once."""
        arr = self._arrays.get(name)
        if arr is None:
            spec = self.index["arrays"].get(name)
            if spec is None:
                raise KeyError(f"{self.root}: no array {name!r}; arrays are {sorted(self.index['arrays'])}")
            path = self.root / spec["file"]
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise ChipStoreError(f"{path}: cannot open chip array: {e}") from None
            if list(arr.shape) != spec["shape"]:
                raise ChipStoreError(f"{path}: shape {arr.shape} does not match index.json {spec['shape']}")
            self._arrays[name] = arr
        return arr

    @staticmethod
    def _take(arr: np.ndarray, index: Any) -> np.ndarray:
        """Rows `index` of a memmap, in the caller's order, copied out in one gather."""
        if np.isscalar(index):
            return np.asarray(arr[int(index)])
        return np.asarray(arr[np.asarray(index, dtype=np.int64)])

    def raw(self, sensor: str, index: Any) -> np.ndarray:
        """Chips in physical units and native dtype: (C, H, W) for one index, (B, C, H, W) for several."""
        self._check_sensor(sensor)
        return self._take(self.array(sensor), index)

    def read(self, sensor: str, index: Any, *, normalise: bool = True) -> np.ndarray:
        """Chips as float32, normalised with the registry statistics unless `normalise=False`."""
        pixels = self.raw(sensor, index)
        if normalise:
            return get_sensor(sensor).normalise(pixels, self.bands(sensor))
        return pixels.astype(np.float32)

    def mask(self, sensor: str, index: Any) -> np.ndarray:
        """uint8 masks: 0 valid, 1 cloud, 2 shadow, 255 nodata."""
        self._check_sensor(sensor)
        return self._take(self.array(f"{sensor}_mask"), index)

    def labels(self, grid: str, index: Any) -> np.ndarray:
        """uint8 WorldCover label chips of a grid ("s10" or "fine") by the manifest's `label_index`."""
        return self._take(self.array(f"labels_{grid}"), index)


def check_manifest(store: ChipStore, manifest: str | Path) -> None:
    """Raise ChipStoreError naming both files unless `manifest` is the one `pair` wrote with `store`.

    They disagree after a kill between pair's two writes, or when either was replaced on its own;
    store indices would then point at the wrong chips.
    """
    manifest = Path(manifest)
    recorded = store.index.get(MANIFEST_HASH_KEY)
    if recorded is None or sha256_file(manifest) != recorded:
        raise ChipStoreError(f"{manifest} does not match {store.root / 'index.json'}: re-run `dvc repro pair`")


def open_accepted(chips_dir: str | Path, manifest: str | Path, accepted: str | Path) -> tuple[ChipStore, pd.DataFrame]:
    """The chip store and the manifest rows of the chips the pairs gate accepted (what training may read).

    A missing input is a ChipStoreError naming the file and the stage that makes it; so is a manifest
    that is not the one written with the store (`check_manifest`).
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ChipStoreError(f"{manifest}: not found; run `dvc repro pair` first")
    ids = accepted_ids(accepted, error=ChipStoreError)
    store = ChipStore(chips_dir)
    check_manifest(store, manifest)
    rows = pd.read_parquet(manifest)
    return store, rows[rows["id"].isin(ids)].reset_index(drop=True)
