"""The chip store: shards of memory-mapped .npy arrays under one index, built for fast random reads in training.

Layout of `data/chips/` (written by `msgfm pair`, indexed by `data/manifest.parquet`):

- `{shard}/` (`00000`, `00001`, ...; pair writes one per AOI) holds that shard's rows of the arrays below. A store
  index (the manifest's `store_index`, `partner_index`, `label_index`) runs on across the shards in order: shard k
  of an array holds the indices that follow the earlier shards' rows. An array a shard has no rows of is absent.
  - `{sensor}.npy`: (n, C, H, W) pixels in physical units and the sensor's native dtype (S2 uint16 reflectance
    x 10000, S1 float32 dB, RGB uint8, DSM float32 metres), bands in registry order (`index.json` lists them).
    Nodata pixels are filled with the band's registry mean (relative bands, DSM height: the chip's own valid
    mean), so the normalised value there is 0 and every value is finite; the mask says where they are.
  - `{sensor}_mask.npy`: (n, H, W) uint8: 0 valid, 1 cloud, 2 cloud shadow (S2 only), 255 nodata.
  - `labels_{grid}.npy`: (l, H, W) uint8 ESA WorldCover codes (0 unknown) per chip position on the 10 m grid
    (`s10`) and the fine grid (`fine`); chips of any sensor or date at the same position share a label chip
    (manifest column `label_index`).
- `index.json`: chip size, units, per sensor its bands, count and dtype, per label grid its count, the shards in
  order (name, AOI, per array its file, shape and dtype), and the SHA-256 of the `data/manifest.parquet` written
  with the store (`manifest_sha256`): `pair` swaps the store in just before the manifest, and readers
  (`open_accepted`, the pairs gate) refuse a manifest whose hash differs, so a kill between the two writes is
  never read as a consistent pair.

Memory-mapped .npy was chosen over zarr because a chip read is then one contiguous slice of a file the page cache
keeps hot, with no decompression (benchmarks/bench_chipstore.py measures it). Shards keep every file the size of
one AOI's chips, so a store of millions of chips is many files, written in parallel (one per Ray task), opened as
reads touch them (at most `MAX_OPEN_SHARDS` at once), and streamed shard by shard (`ChipStore.shard_ranges`).
Writing: `ChipStoreWriter` makes a temporary folder beside the store; `ShardWriter`s (here or in Ray workers)
preallocate one shard's arrays on disk and fill them chip by chip, never holding more than one raster in memory;
`commit` writes index.json from their entries and renames the folder into place.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msgfm.decisions import accepted_ids
from msgfm.geo.io import atomic_write_json, sha256_file
from msgfm.sensors import Normaliser, get_sensor

STORE_VERSION = 2
MASK_VALID, MASK_CLOUD, MASK_SHADOW, MASK_NODATA = 0, 1, 2, 255
MANIFEST_HASH_KEY = "manifest_sha256"
"""index.json key holding the SHA-256 of the manifest written with the store."""
MAX_OPEN_SHARDS = 256
"""Shard arrays a reader keeps mapped at once (each holds a file descriptor); the least recently read closes."""


class ChipStoreError(OSError):
    """The store is missing, incomplete or inconsistent; the message names the file."""


@dataclass(frozen=True)
class SensorArray:
    """Shape and contents of one sensor's pixel array in a shard."""

    sensor: str
    count: int
    bands: tuple[str, ...]
    dtype: str


class ShardWriter:
    """One shard's arrays, preallocated in the store's temporary folder and filled chip by chip (shard-local rows)."""

    def __init__(
        self,
        folder: str | Path,
        name: str,
        chip_px: int,
        sensors: list[SensorArray],
        label_counts: dict[str, int],
        aoi: str = "",
    ):
        self.name, self.aoi, self.chip_px = name, aoi, chip_px
        self.dir = Path(folder) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.specs = {s.sensor: s for s in sensors if s.count}
        self.label_counts = dict(label_counts)
        self.arrays: dict[str, np.memmap] = {}
        self.fill: dict[str, np.ndarray] = {}
        for s in self.specs.values():
            self._allocate(s.sensor, s.dtype, (s.count, len(s.bands), chip_px, chip_px))
            self._allocate(f"{s.sensor}_mask", "uint8", (s.count, chip_px, chip_px))
            self.fill[s.sensor] = get_sensor(s.sensor).stats(s.bands)[0].astype(s.dtype)
        for grid, count in self.label_counts.items():
            if count:
                self._allocate(f"labels_{grid}", "uint8", (count, chip_px, chip_px))

    def _allocate(self, array: str, dtype: str, shape: tuple[int, ...]) -> None:
        self.arrays[array] = np.lib.format.open_memmap(self.dir / f"{array}.npy", "w+", dtype, shape)

    def write(self, sensor: str, index: int, pixels: np.ndarray, mask: np.ndarray) -> None:
        """Store one chip: (C, H, W) physical values and its (H, W) mask; nodata pixels get the band mean."""
        nodata = mask == MASK_NODATA
        fill = self.fill[sensor].astype(np.float64)
        relative = [i for i, b in enumerate(self.specs[sensor].bands) if get_sensor(sensor).band(b).relative]
        if relative and (~nodata).any():  # relative bands (DSM): fill with the chip's own valid mean
            fill[relative] = pixels[relative][:, ~nodata].mean(axis=1)
        values = np.where(nodata[None], fill[:, None, None], pixels)
        self.arrays[sensor][index] = values.astype(self.specs[sensor].dtype)
        self.arrays[f"{sensor}_mask"][index] = mask

    def write_label(self, grid: str, index: int, label: np.ndarray) -> None:
        """Store one (H, W) land-cover label chip."""
        self.arrays[f"labels_{grid}"][index] = label

    def close(self) -> dict[str, Any]:
        """Flush the arrays to disk; return the shard's entry for index.json (plain data, so it crosses Ray)."""
        arrays = {}
        for array, arr in self.arrays.items():
            arr.flush()
            arrays[array] = {"file": f"{self.name}/{array}.npy", "shape": list(arr.shape), "dtype": arr.dtype.name}
        self.arrays.clear()
        return {
            "name": self.name,
            "aoi": self.aoi,
            "bands": {s: list(spec.bands) for s, spec in self.specs.items()},
            "label_counts": self.label_counts,
            "arrays": arrays,
        }


class ChipStoreWriter:
    """A new store in a temporary folder beside `root`: shards are written into it, `commit` moves it into place."""

    def __init__(self, root: str | Path, chip_px: int):
        self.root = Path(root)
        self.chip_px = chip_px
        self.tmp = self.root.parent / f".{self.root.name}.partial"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)

    def shard(self, name: str, sensors: list[SensorArray], label_counts: dict[str, int], aoi: str = "") -> ShardWriter:
        """A writer for shard `name` of this store (a Ray task makes its own `ShardWriter(writer.tmp, ...)`)."""
        return ShardWriter(self.tmp, name, self.chip_px, sensors, label_counts, aoi)

    def commit(self, shards: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
        """Write index.json for `shards` (their `close()` entries, in store order) and replace `root` with the store."""
        index = {**_index(self.chip_px, shards, self.tmp), **(extra or {})}
        atomic_write_json(self.tmp / "index.json", index)
        old = self.root.parent / f".{self.root.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if self.root.exists():
            os.replace(self.root, old)
        os.replace(self.tmp, self.root)
        shutil.rmtree(old, ignore_errors=True)
        return self.root


def _index(chip_px: int, shards: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """index.json's contents: per sensor bands, total count and dtype; per label grid its count; the shards."""
    sensors: dict[str, dict[str, Any]] = {}
    grids: dict[str, int] = {}
    for shard in shards:
        for sensor, bands in shard["bands"].items():
            spec = shard["arrays"][sensor]
            entry = sensors.setdefault(sensor, {"bands": bands, "count": 0, "dtype": spec["dtype"]})
            if entry["bands"] != bands or entry["dtype"] != spec["dtype"]:
                raise ChipStoreError(
                    f"{folder / shard['name']}: {sensor} bands {bands} ({spec['dtype']}) differ from other shards' "
                    f"{entry['bands']} ({entry['dtype']})"
                )
            entry["count"] += spec["shape"][0]
        for grid, count in shard["label_counts"].items():
            grids[grid] = grids.get(grid, 0) + int(count)
    return {
        "version": STORE_VERSION,
        "chip_px": chip_px,
        "units": "physical (sensor's native dtype; normalise with msgfm.sensors)",
        "sensors": dict(sorted(sensors.items())),
        "label_grids": grids,
        "shards": shards,
    }


@dataclass(frozen=True)
class _Layout:
    """Where one array's rows lie: the shards that hold it, and the store index each one's rows start and stop at."""

    shards: tuple[int, ...]
    starts: np.ndarray
    stops: np.ndarray
    total: int
    row_shape: tuple[int, ...]
    dtype: str


class ChipStore:
    """Random access to the chips by sensor and store index (the manifest's `store_index`).

    >>> store = ChipStore("data/chips")
    >>> x = store.read("s2", [3, 17, 42])            # (3, 12, 64, 64) float32, normalised
    >>> y = store.read("s1", manifest.partner_index)  # the paired S1 chips, same order
    >>> seg = store.labels("fine", rgb_rows.label_index)  # (B, 64, 64) uint8 WorldCover codes
    >>> for rows in store.shard_ranges("s2"): ...     # stream: one shard's indices at a time
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
        self._layouts = {name: self._build_layout(name) for name in self._array_names()}
        self._open: OrderedDict[tuple[str, int], tuple[np.memmap, np.ndarray]] = OrderedDict()
        self._normalisers: dict[str, Normaliser] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the mapped shards (a pickled memmap carries its whole array) or the normalisers' planes:
        a DataLoader or Ray worker that unpickles the store maps the shards it reads itself."""
        return {**self.__dict__, "_open": OrderedDict(), "_normalisers": {}}

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

    def _array_names(self) -> list[str]:
        names = [n for s in self.index["sensors"] for n in (s, f"{s}_mask")]
        return names + [f"labels_{g}" for g in self.index["label_grids"]]

    def _build_layout(self, name: str) -> _Layout:
        """Check the shards' rows of `name` add up to index.json's count; where each shard's rows start."""
        px = (self.chip_px, self.chip_px)
        if name.startswith("labels_"):
            total, row_shape, dtype = int(self.index["label_grids"][name[len("labels_") :]]), px, "uint8"
        else:
            spec = self.index["sensors"][name.removesuffix("_mask")]
            total = int(spec["count"])
            row_shape, dtype = (px, "uint8") if name.endswith("_mask") else ((len(spec["bands"]), *px), spec["dtype"])
        held = [k for k, shard in enumerate(self.index["shards"]) if name in shard["arrays"]]
        counts = np.array([self.index["shards"][k]["arrays"][name]["shape"][0] for k in held], dtype=np.int64)
        if counts.sum() != total:
            raise ChipStoreError(
                f"{self.root / 'index.json'}: its shards hold {int(counts.sum())} rows of {name}, its count is {total}"
            )
        stops = np.cumsum(counts)
        return _Layout(tuple(held), stops - counts, stops, total, row_shape, dtype)

    def _layout_of(self, name: str) -> _Layout:
        layout = self._layouts.get(name)
        if layout is None:
            raise KeyError(f"{self.root}: no array {name!r}; arrays are {sorted(self._layouts)}")
        return layout

    def shard_ranges(self, name: str) -> list[range]:
        """The store indices of array `name` (e.g. "s2") shard by shard: read a range at a time to stream the store."""
        layout = self._layout_of(name)
        return [range(int(a), int(b)) for a, b in zip(layout.starts, layout.stops, strict=True)]

    def shard_array(self, name: str, part: int) -> np.memmap:
        """The memory-mapped rows of array `name` in its `part`-th shard (`shard_ranges(name)[part]`)."""
        return self._mapped(name, part)[0]

    def _mapped(self, name: str, part: int) -> tuple[np.memmap, np.ndarray]:
        """The shard's memmap, opened once (least recently read closed past MAX_OPEN_SHARDS), and a plain
        ndarray view of it: indexing a memmap subclass costs several times more per row."""
        key = (name, part)
        mapped = self._open.get(key)
        if mapped is not None:
            self._open.move_to_end(key)
            return mapped
        spec = self.index["shards"][self._layout_of(name).shards[part]]["arrays"][name]
        path = self.root / spec["file"]
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ChipStoreError(f"{path}: cannot open chip array: {e}") from None
        if list(arr.shape) != spec["shape"] or arr.dtype.name != spec["dtype"]:
            raise ChipStoreError(f"{path}: {arr.shape} {arr.dtype} does not match index.json {spec['shape']}")
        mapped = self._open[key] = (arr, arr.view(np.ndarray))
        if len(self._open) > MAX_OPEN_SHARDS:
            self._open.popitem(last=False)
        return mapped

    def _take(self, name: str, index: Any, normalise: Normaliser | None = None) -> np.ndarray:
        """Rows `index` (an int or ints) of array `name`, in the caller's order, copied out of the shards.

        Rows of one shard: one fancy-indexed gather. Rows of several, or normalised rows: row by row straight
        into place (grouping by shard and scattering would copy every row twice; a normalised row is cast and
        normalised while it is in cache).
        """
        layout = self._layout_of(name)
        idx = np.asarray(index, dtype=np.int64)
        flat = idx.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= layout.total):
            bad = flat[(flat < 0) | (flat >= layout.total)][0]
            raise IndexError(f"{self.root}: {name} has no row {bad} (it has {layout.total})")
        part = np.searchsorted(layout.stops, flat, side="right")
        if normalise is None and flat.size and (part == part[0]).all():
            out = self._mapped(name, int(part[0]))[1][flat - layout.starts[part[0]]]
        else:
            out = np.empty((flat.size, *layout.row_shape), layout.dtype if normalise is None else np.float32)
            parts = part.tolist()
            views = {k: self._mapped(name, k)[1] for k in set(parts)}
            # iterating `out` yields its rows as views without an index per row: ~20% faster on 64 px chips
            rows = zip(out, parts, (flat - layout.starts[part]).tolist(), strict=True)
            if normalise is None:
                for dst, k, row in rows:
                    dst[...] = views[k][row]
            else:
                for dst, k, row in rows:
                    normalise(views[k][row], dst)
        return out.reshape(*idx.shape, *layout.row_shape)

    def raw(self, sensor: str, index: Any) -> np.ndarray:
        """Chips in physical units and native dtype: (C, H, W) for one index, (B, C, H, W) for several."""
        self._check_sensor(sensor)
        return self._take(sensor, index)

    def read(self, sensor: str, index: Any, *, normalise: bool = True) -> np.ndarray:
        """Chips as float32, normalised with the registry statistics (`Sensor.normalise`) unless `normalise=False`."""
        if not normalise:
            return self.raw(sensor, index).astype(np.float32)
        self._check_sensor(sensor)
        normaliser = self._normalisers.get(sensor)
        if normaliser is None:  # its constants once per store, as planes of the chip size
            normaliser = get_sensor(sensor).normaliser(self.bands(sensor), (self.chip_px, self.chip_px))
            self._normalisers[sensor] = normaliser
        return self._take(sensor, index, normaliser)

    def mask(self, sensor: str, index: Any) -> np.ndarray:
        """uint8 masks: 0 valid, 1 cloud, 2 shadow, 255 nodata."""
        self._check_sensor(sensor)
        return self._take(f"{sensor}_mask", index)

    def labels(self, grid: str, index: Any) -> np.ndarray:
        """uint8 WorldCover label chips of a grid ("s10" or "fine") by the manifest's `label_index`."""
        return self._take(f"labels_{grid}", index)


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
