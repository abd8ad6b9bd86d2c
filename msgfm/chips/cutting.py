"""One AOI's share of `msgfm pair`: scan its rasters' validity, then cut its kept chips into one shard of the store.

Both are units of work that run in this process or as Ray tasks (msgfm.cluster.tasks): their arguments and
results are plain data, they read only the AOI's own rasters, and the shard lands in the store's temporary
folder under its own name, so the store is the same bytes however many workers cut it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from msgfm.chips.partners import Raster
from msgfm.chips.positions import GridKey, Position, chip_classes, window_sum
from msgfm.chips.store import MASK_NODATA, MASK_VALID, SensorArray, ShardWriter
from msgfm.geo.grids import Bounds, Grid
from msgfm.sensors import get_sensor

if TYPE_CHECKING:
    from msgfm.config import PairParams

MANIFEST_COLUMNS = [
    "id", "aoi", "biome", "sensor", "grid", "date", "datetime", "source_id", "row", "col", "crs",
    "minx", "miny", "maxx", "maxy", "split", "block", "store_index", "partner_id", "partner_sensor",
    "partner_index", "partner_days", "paired", "cloud_fraction", "nodata_fraction", "labels", "label_index",
    "mean", "std",
]  # fmt: skip
"""Columns of data/manifest.parquet (see docs/data-layout.md)."""


def scan_aoi(
    cfg: PairParams, rasters: list[Raster], positions: dict[GridKey, list[tuple[int, int]]], splits: set[Position]
) -> list[dict[tuple[int, int], dict[str, float]]]:
    """Pass 1 for one AOI: per raster, its chips at split positions with little nodata, with cloud and nodata shares."""
    size = cfg.chip_px
    kept = []
    for raster in rasters:
        aoi, grid_name = raster.row["aoi"], raster.row["grid"]
        pos = [p for p in positions.get((aoi, grid_name), []) if (aoi, grid_name, *p) in splits]
        chips: dict[tuple[int, int], dict[str, float]] = {}
        if pos:
            valid, cloud = _validity(raster)
            nodata = 1 - window_sum(valid.astype(np.float32), pos, size) / size**2
            cloudy = (
                window_sum(((cloud == 1) | (cloud == 2)).astype(np.float32), pos, size) / size**2
                if cloud is not None
                else np.zeros(len(pos))
            )
            for p, nd, cf in zip(pos, nodata, cloudy, strict=True):
                if nd <= cfg.max_nodata_fraction:
                    chips[p] = {"nodata_fraction": float(nd), "cloud_fraction": float(cf)}
        kept.append(chips)
    return kept


def _validity(raster: Raster) -> tuple[np.ndarray, np.ndarray | None]:
    """(valid, cloud) full-raster arrays: valid is False at nodata; cloud holds the S2 mask codes."""
    sensor = raster.row["sensor"]
    with rasterio.open(raster.path) as src:
        if sensor == "rgb":
            valid = np.any(src.read() != 0, axis=0)
        else:
            band = src.read(1)
            nodata = src.nodata
            valid = np.isfinite(band) if band.dtype.kind == "f" else np.ones(band.shape, bool)
            if nodata is not None and not math.isnan(nodata):
                valid &= band != nodata
    cloud = None
    if raster.cloud_path is not None:
        with rasterio.open(raster.cloud_path) as src:
            cloud = src.read(1)
        valid &= cloud != MASK_NODATA
    return valid, cloud


def cut_aoi(
    cfg: PairParams,
    folder: Path,
    shard: str,
    rasters: list[Raster],
    labels: dict[GridKey, Path],
    label_index: dict[Position, int],
    grids: dict[GridKey, Grid],
    splits: dict[Position, tuple[str, str]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pass 2 for one AOI: write its label chips and kept chips as shard `shard` of the store being built in
    `folder`; return the shard's index entry and the chips' manifest records (store indices already numbered)."""
    first = _first_indices(rasters, label_index)
    sensors = sorted({r.row["sensor"] for r in rasters if r.chips})
    arrays = [
        SensorArray(s, sum(len(r.chips) for r in rasters if r.row["sensor"] == s), _bands(rasters, s), _dtype(s))
        for s in sensors
    ]
    label_counts = {g: sum(1 for _, grid, *_ in label_index if grid == g) for g in ("s10", "fine")}
    writer = ShardWriter(folder, shard, cfg.chip_px, arrays, label_counts, aoi=rasters[0].row["aoi"])
    classes = _write_labels(writer, labels, label_index, first, cfg)
    records = _write_chips(writer, rasters, grids, splits, (label_index, classes), first, cfg.chip_px)
    return writer.close(), records


def _bands(rasters: list[Raster], sensor: str) -> tuple[str, ...]:
    return tuple(next(r.row["band_names"] for r in rasters if r.row["sensor"] == sensor))


def _dtype(sensor: str) -> str:
    return get_sensor(sensor).bands[0].dtype


def _first_indices(rasters: list[Raster], label_index: dict[Position, int]) -> dict[str, int]:
    """The store index of the shard's first row, per sensor and per label grid (`labels_{grid}`)."""
    first: dict[str, int] = {}
    for r in rasters:
        for chip in r.chips.values():
            s = r.row["sensor"]
            first[s] = min(first.get(s, chip["store_index"]), chip["store_index"])
    for (_, grid, *_), idx in label_index.items():
        key = f"labels_{grid}"
        first[key] = min(first.get(key, idx), idx)
    return first


def _write_labels(
    writer: ShardWriter,
    labels: dict[GridKey, Path],
    label_index: dict[Position, int],
    first: dict[str, int],
    cfg: PairParams,
) -> dict[Position, list[int]]:
    """Store the label chip of every labelled position; return its classes by area (`chip_classes`)."""
    size = cfg.chip_px
    label_classes: dict[Position, list[int]] = {}
    for key, path in sorted(labels.items()):
        with rasterio.open(path) as src:
            lab = src.read(1)
        for (aoi, grid_name, r, c), idx in label_index.items():
            if (aoi, grid_name) == key:
                chip = lab[r : r + size, c : c + size]
                writer.write_label(grid_name, idx - first[f"labels_{grid_name}"], chip)
                label_classes[(aoi, grid_name, r, c)] = chip_classes(chip, cfg.label_min_fraction)
    return label_classes


def _write_chips(
    writer: ShardWriter,
    rasters: list[Raster],
    grids: dict[GridKey, Grid],
    splits: dict[Position, tuple[str, str]],
    labels: tuple[dict[Position, int], dict[Position, list[int]]],
    first: dict[str, int],
    size: int,
) -> list[dict[str, Any]]:
    """Stream each raster's kept chips and masks into the shard; return their manifest records."""
    records = []
    for raster in rasters:
        if not raster.chips:
            continue
        row = raster.row
        mean, std = get_sensor(row["sensor"]).stats(list(row["band_names"]))
        with rasterio.open(raster.path) as src:
            data = src.read()
        valid, cloud = _validity(raster)
        grid = grids[(row["aoi"], row["grid"])]
        for (r, c), chip in raster.chips.items():
            pixels = data[:, r : r + size, c : c + size]
            mask = np.where(valid[r : r + size, c : c + size], MASK_VALID, MASK_NODATA).astype(np.uint8)
            if cloud is not None:
                cl = cloud[r : r + size, c : c + size]
                mask = np.where((mask == MASK_VALID) & ((cl == 1) | (cl == 2)), cl, mask).astype(np.uint8)
            writer.write(row["sensor"], chip["store_index"] - first[row["sensor"]], pixels, mask)
            norm = (pixels.astype(np.float32) - mean[:, None, None]) / std[:, None, None]
            values = norm[:, mask != MASK_NODATA]
            pos = (row["aoi"], row["grid"], r, c)
            records.append(_record(raster, pos, grid.window_bounds(r, c, size), splits[pos], labels, values))
    return records


def _record(
    raster: Raster,
    pos: Position,
    bounds: Bounds,
    split: tuple[str, str],
    labels: tuple[dict[Position, int], dict[Position, list[int]]],
    values: np.ndarray,
) -> dict[str, Any]:
    """The manifest row of the chip of `raster` at `pos`; `values` are its normalised valid pixels."""
    row, (_, _, r, c) = raster.row, pos
    chip = raster.chips[(r, c)]
    partner, days = chip.get("partner", (None, float("nan")))
    label_index, classes = labels
    return {
        "id": chip_id(row, r, c),
        "aoi": row["aoi"],
        "biome": row["biome"],
        "sensor": row["sensor"],
        "grid": row["grid"],
        "date": row["date"],
        "datetime": row["datetime"],
        "source_id": row["id"],
        "row": r,
        "col": c,
        "crs": row["crs"],
        "minx": bounds[0],
        "miny": bounds[1],
        "maxx": bounds[2],
        "maxy": bounds[3],
        "split": split[0],
        "block": split[1],
        "store_index": chip["store_index"],
        "partner_id": chip_id(partner.row, r, c) if partner else None,
        "partner_sensor": partner.row["sensor"] if partner else None,
        "partner_index": partner.chips[(r, c)]["store_index"] if partner else -1,
        "partner_days": float(days),
        "paired": partner is not None,
        "cloud_fraction": chip["cloud_fraction"],
        "nodata_fraction": chip["nodata_fraction"],
        "labels": classes.get(pos, []),
        "label_index": label_index.get(pos, -1),
        "mean": float(values.mean()) if values.size else float("nan"),
        "std": float(values.std()) if values.size else float("nan"),
    }


def chip_id(row: dict[str, Any], r: int, c: int) -> str:
    """The manifest id of the chip at (r, c) of the raster described by `row`: its acquisition's id and the origin.

    The item id, not sensor and date, so two acquisitions of one day get different chips.
    """
    return f"{row['id']}_r{r:05d}_c{c:05d}"
