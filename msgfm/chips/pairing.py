"""`msgfm pair`: cut co-registered rasters into chips, pair sensors, split by spatial blocks, fill the store.

The stage runs in phases: load the rasters the coreg gate accepted; lay out chip positions on each
AOI grid (`msgfm.chips.positions`) and give them spatial-block splits (`msgfm.chips.splits`); scan
each raster's validity to keep the chips with little nodata; pair acquisitions in time
(`msgfm.chips.partners`); number the kept chips and open the store; stream labels, then chips, into
it; write the store and `data/manifest.parquet`. Chips without a partner stay in the manifest as
unpaired single-sensor samples.

Writes the chip store (`msgfm.chips.store`) and `data/manifest.parquet`, whose SHA-256 the store's
`index.json` records so readers can tell the two belong together. Two passes over the rasters: the
first reads validity to decide which chips to keep (so the store can be preallocated), the second
streams chips into the memmaps.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from tqdm import tqdm

from msgfm.chips.partners import Raster, choose_partners
from msgfm.chips.positions import (
    GridKey,
    Position,
    chip_classes,
    chip_footprints,
    chip_positions,
    position_classes,
    window_sum,
)
from msgfm.chips.splits import assign_splits
from msgfm.chips.store import MANIFEST_HASH_KEY, MASK_NODATA, MASK_VALID, ChipStoreWriter, SensorArray
from msgfm.decisions import accepted_ids
from msgfm.faults import kill_point
from msgfm.geo.grids import Bounds, Grid
from msgfm.geo.io import atomic_path, sha256_file
from msgfm.sensors import get_sensor

if TYPE_CHECKING:
    from msgfm.config import PairParams

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "id", "aoi", "biome", "sensor", "grid", "date", "datetime", "source_id", "row", "col", "crs",
    "minx", "miny", "maxx", "maxy", "split", "block", "store_index", "partner_id", "partner_sensor",
    "partner_index", "partner_days", "paired", "cloud_fraction", "nodata_fraction", "labels", "label_index",
    "mean", "std",
]  # fmt: skip
"""Columns of data/manifest.parquet (see docs/data-layout.md)."""


class PairError(RuntimeError):
    """The stage cannot run (missing inputs, nothing accepted); the message names the file."""


@dataclass
class _Inputs:
    """The accepted rasters, grouped: image rasters per AOI, land-cover rasters and the grid per AOI grid."""

    images: dict[str, list[Raster]]
    labels: dict[GridKey, Path]
    grids: dict[GridKey, Grid]

    def in_store_order(self) -> list[Raster]:
        """Image rasters by AOI, sensor and time: the order chips are scanned and numbered in the store."""
        return [
            r
            for aoi in sorted(self.images)
            for r in sorted(self.images[aoi], key=lambda x: (x.row["sensor"], x.row["datetime"]))
        ]


@dataclass
class _Labels:
    """Label chips in the store: index per position, and the classes each holds."""

    index: dict[Position, int]
    classes: dict[Position, list[int]]


def pair(cfg: PairParams, *, coreg_dir: Path, coreg_gate: Path, seed: int = 0) -> pd.DataFrame:
    """Run the stage: chips, pairs, splits, store and manifest. Returns the manifest."""
    coreg_dir = Path(coreg_dir)
    inputs = _group(coreg_dir, load_accepted_rasters(coreg_dir, coreg_gate))
    positions = chip_positions(inputs.grids, cfg.chip_px, cfg.stride_px)
    footprints, origins = chip_footprints(inputs.grids, positions, cfg.chip_px)
    classes = position_classes(inputs.labels, positions, cfg.chip_px, cfg.label_min_fraction)
    splits = assign_splits(cfg, seed, footprints, origins, classes)
    rasters = inputs.in_store_order()
    _keep_valid_chips(cfg, rasters, positions, splits)
    for group in inputs.images.values():
        choose_partners(group, cfg.max_days, cfg.fine_max_days)
    counts, label_index = _number_chips(rasters, inputs.labels)
    writer = _open_store(cfg, rasters, counts, label_index)
    labels = _Labels(label_index, _write_labels(writer, inputs.labels, label_index, cfg))
    records = _write_chips(writer, rasters, inputs.grids, splits, labels, cfg.chip_px)
    manifest = pd.DataFrame(records, columns=MANIFEST_COLUMNS)
    _commit(cfg, writer, manifest)
    log.info(
        "pair: %d chips (%s), %d paired; splits %s",
        len(manifest),
        dict(counts),
        int(manifest["paired"].sum()),
        manifest["split"].value_counts().to_dict(),
    )
    return manifest


def load_accepted_rasters(coreg_dir: Path, gate_path: Path) -> pd.DataFrame:
    """rasters.parquet rows with status ok that the coreg gate accepted."""
    table_path = Path(coreg_dir) / "rasters.parquet"
    if not table_path.is_file():
        raise PairError(f"{table_path}: not found (run `msgfm coregister` and `msgfm validate_coreg` first)")
    accepted = accepted_ids(gate_path, error=PairError)
    table = pd.read_parquet(table_path)
    table = table[(table["status"] == "ok") & table["id"].astype(str).isin(accepted)]
    if table.empty:
        raise PairError(f"{gate_path}: the coreg gate accepted no rasters; nothing to pair")
    return table.reset_index(drop=True)


def _group(coreg_dir: Path, table: pd.DataFrame) -> _Inputs:
    """Group the accepted rasters; every raster of an AOI grid must share that grid."""
    by_id = {r["id"]: r for r in table.to_dict(orient="records")}
    inputs = _Inputs(defaultdict(list), {}, {})
    for r in by_id.values():
        grid = Grid(r["crs"], _affine(r["transform"]), int(r["width"]), int(r["height"]))
        key = (r["aoi"], r["grid"])
        if key in inputs.grids and inputs.grids[key] != grid:
            raise PairError(f"{coreg_dir}/rasters.parquet: {r['id']} is on another {r['grid']} grid than its AOI")
        inputs.grids[key] = grid
        if r["kind"] == "landcover":
            inputs.labels[key] = coreg_dir / r["path"]
        elif r["kind"] == "image":
            cloud = by_id.get(f"{r['id']}_cloud")
            inputs.images[r["aoi"]].append(
                Raster(r, coreg_dir / r["path"], coreg_dir / cloud["path"] if cloud else None)
            )
    return inputs


def _keep_valid_chips(
    cfg: PairParams,
    rasters: list[Raster],
    positions: dict[GridKey, list[tuple[int, int]]],
    splits: dict[Position, tuple[str, str]],
) -> None:
    """Pass 1: keep each raster's chips at split positions with little nodata, with cloud and nodata fractions."""
    size = cfg.chip_px
    for raster in tqdm(rasters, desc="pair: scan", unit="raster"):
        aoi, grid_name = raster.row["aoi"], raster.row["grid"]
        pos = [p for p in positions.get((aoi, grid_name), []) if (aoi, grid_name, *p) in splits]
        if not pos:
            continue
        valid, cloud = _validity(raster)
        nodata = 1 - window_sum(valid.astype(np.float32), pos, size) / size**2
        cloudy = (
            window_sum(((cloud == 1) | (cloud == 2)).astype(np.float32), pos, size) / size**2
            if cloud is not None
            else np.zeros(len(pos))
        )
        for p, nd, cf in zip(pos, nodata, cloudy, strict=True):
            if nd <= cfg.max_nodata_fraction:
                raster.chips[p] = {"nodata_fraction": float(nd), "cloud_fraction": float(cf)}


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


def _number_chips(rasters: list[Raster], labels: dict[GridKey, Path]) -> tuple[dict[str, int], dict[Position, int]]:
    """Give each kept chip its `store_index` per sensor and each labelled position its label index per grid."""
    counts: dict[str, int] = defaultdict(int)
    for raster in rasters:
        s = raster.row["sensor"]
        for chip in raster.chips.values():
            chip["store_index"] = counts[s]
            counts[s] += 1
    label_index: dict[Position, int] = {}
    label_counts: dict[str, int] = defaultdict(int)
    for raster in rasters:
        key = (raster.row["aoi"], raster.row["grid"])
        if key not in labels:
            continue
        for p in raster.chips:
            lk = (*key, *p)
            if lk not in label_index:
                label_index[lk] = label_counts[key[1]]
                label_counts[key[1]] += 1
    return counts, label_index


def _open_store(
    cfg: PairParams, rasters: list[Raster], counts: dict[str, int], label_index: dict[Position, int]
) -> ChipStoreWriter:
    """Preallocate the store for the numbered chips; every raster of a sensor must have the same bands."""
    if not counts:
        raise PairError("no chip passed pair.max_nodata_fraction and the split buffer; nothing to store")
    bands = {r.row["sensor"]: tuple(r.row["band_names"]) for r in rasters}
    for r in rasters:
        if tuple(r.row["band_names"]) != bands[r.row["sensor"]]:
            raise PairError(f"{r.path}: bands {list(r.row['band_names'])} differ from other {r.row['sensor']} rasters")
    sensors = [SensorArray(s, counts[s], bands[s], get_sensor(s).bands[0].dtype) for s in sorted(counts)]
    label_counts = Counter(grid for _, grid, _, _ in label_index)
    return ChipStoreWriter(cfg.out_dir, cfg.chip_px, sensors, {g: label_counts.get(g, 0) for g in ("s10", "fine")})


def _write_labels(
    writer: ChipStoreWriter, labels: dict[GridKey, Path], label_index: dict[Position, int], cfg: PairParams
) -> dict[Position, list[int]]:
    """Pass 2a: store the label chip of every labelled position; return its classes by area (`chip_classes`)."""
    size = cfg.chip_px
    label_classes: dict[Position, list[int]] = {}
    for key, path in sorted(labels.items()):
        with rasterio.open(path) as src:
            lab = src.read(1)
        for (aoi, grid_name, r, c), idx in label_index.items():
            if (aoi, grid_name) == key:
                chip = lab[r : r + size, c : c + size]
                writer.write_label(grid_name, idx, chip)
                label_classes[(aoi, grid_name, r, c)] = chip_classes(chip, cfg.label_min_fraction)
    return label_classes


def _write_chips(
    writer: ChipStoreWriter,
    rasters: list[Raster],
    grids: dict[GridKey, Grid],
    splits: dict[Position, tuple[str, str]],
    labels: _Labels,
    size: int,
) -> list[dict[str, Any]]:
    """Pass 2b: stream each raster's kept chips and masks into the store; return their manifest records."""
    records = []
    for raster in tqdm(rasters, desc="pair: chips", unit="raster"):
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
            writer.write(row["sensor"], chip["store_index"], pixels, mask)
            norm = (pixels.astype(np.float32) - mean[:, None, None]) / std[:, None, None]
            values = norm[:, mask != MASK_NODATA]
            pos = (row["aoi"], row["grid"], r, c)
            records.append(_record(raster, pos, grid.window_bounds(r, c, size), splits[pos], labels, values))
    return records


def _record(
    raster: Raster, pos: Position, bounds: Bounds, split: tuple[str, str], labels: _Labels, values: np.ndarray
) -> dict[str, Any]:
    """The manifest row of the chip of `raster` at `pos`; `values` are its normalised valid pixels."""
    row, (_, _, r, c) = raster.row, pos
    chip = raster.chips[(r, c)]
    partner, days = chip.get("partner", (None, float("nan")))
    return {
        "id": _chip_id(row, r, c),
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
        "partner_id": _chip_id(partner.row, r, c) if partner else None,
        "partner_sensor": partner.row["sensor"] if partner else None,
        "partner_index": partner.chips[(r, c)]["store_index"] if partner else -1,
        "partner_days": float(days),
        "paired": partner is not None,
        "cloud_fraction": chip["cloud_fraction"],
        "nodata_fraction": chip["nodata_fraction"],
        "labels": labels.classes.get(pos, []),
        "label_index": labels.index.get(pos, -1),
        "mean": float(values.mean()) if values.size else float("nan"),
        "std": float(values.std()) if values.size else float("nan"),
    }


def _commit(cfg: PairParams, writer: ChipStoreWriter, manifest: pd.DataFrame) -> None:
    """Swap the store in, then write the manifest whose hash the store's index.json records."""
    # the store's index.json records the manifest's hash and is swapped in first, the manifest right after:
    # a kill between the two renames leaves a store whose hash the old manifest does not match, which
    # every reader (msgfm.chips.store.check_manifest) refuses until pair runs again
    with atomic_path(cfg.manifest, suffix=".parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
        writer.commit({"manifest": str(cfg.manifest), "chips": len(manifest), MANIFEST_HASH_KEY: sha256_file(tmp)})
        kill_point("pair:store_committed")


def _affine(t: Any) -> Affine:
    """The Affine of a rasters.parquet `transform` (its first six coefficients)."""

    return Affine(*list(t)[:6])


def _chip_id(row: dict[str, Any], r: int, c: int) -> str:
    """The manifest id of the chip at (r, c) of the raster described by `row`: its acquisition's id and the origin.

    The item id, not sensor and date, so two acquisitions of one day get different chips.
    """
    return f"{row['id']}_r{r:05d}_c{c:05d}"
