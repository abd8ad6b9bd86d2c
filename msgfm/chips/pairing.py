"""`msgfm pair`: cut co-registered rasters into chips, pair sensors, split by spatial blocks, fill the store.

Chips are `pair.chip_px` pixels on every grid (640 m on the 10 m grid, 64 m on a 1 m fine grid),
stepped by `pair.stride_px`, per AOI and acquisition date. Pairing is per acquisition: each S1
acquisition is paired with the S2 acquisition closest in time within `pair.max_days`, each RGB
with the closest DSM within `pair.fine_max_days`; a chip's partner is the partner acquisition's
chip at the same position. An S2 (or DSM) chip's partner is the closest-in-time S1 (RGB) chip that
chose it. Chips without a partner stay in the manifest as unpaired single-sensor samples.

Splits: each AOI is cut into square blocks of `pair.block_m` anchored at its S2 grid corner; blocks
get train, val or test by a seeded shuffle (`assign_splits`: val/test take their share of the blocks
holding fine-grid chips and of those holding S2-grid chips only,
every AOI keeps train blocks, and a block turns train when a land-cover class would otherwise be
missing from train). A chip gets the split of every block its footprint, grown by `pair.buffer_m`,
overlaps; a chip that would overlap blocks of two splits is dropped, so no two chips of different
splits ever share a pixel. The same blocks cut the 10 m and the fine grid, so the rule holds across grids.

Reads only the rasters the coreg gate accepted; writes the chip store (`msgfm.chips.store`)
and `data/manifest.parquet`, whose SHA-256 the store's `index.json` records so readers can tell the
two belong together. Two passes over the rasters: the first reads validity to decide which
chips to keep (so the store can be preallocated), the second streams chips into the memmaps.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rasterio
from tqdm import tqdm

from msgfm.chips.store import MANIFEST_HASH_KEY, MASK_NODATA, MASK_VALID, ChipStoreWriter, SensorArray
from msgfm.faults import kill_point
from msgfm.geo.grids import Grid
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

SPLITS = ("train", "val", "test")
_PAIR_OF = {"s1": "s2", "rgb": "dsm"}
_GRID_OF = {"s1": "s10", "s2": "s10", "rgb": "fine", "dsm": "fine"}


class PairError(RuntimeError):
    """The stage cannot run (missing inputs, nothing accepted); the message names the file."""


@dataclass
class _Raster:
    """One accepted co-registered image raster and the chips cut from it."""

    row: dict[str, Any]
    path: Path
    cloud_path: Path | None
    chips: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# splits


Position = tuple[str, str, int, int]
"""A chip position: (aoi, grid, row, col)."""


def assign_splits(
    cfg: PairParams,
    seed: int,
    footprints: dict[Position, tuple[float, float, float, float]],
    origins: dict[str, tuple[float, float]],
    classes: dict[Position, set[int]],
) -> dict[Position, tuple[str, str]]:
    """Split and block id of every chip position that the buffer keeps (see the module docstring).

    Blocks are shuffled with the seed and grouped by the grids whose chips they hold (blocks with fine-grid
    chips and blocks with S2-grid chips only); test and val take their share of each group, at most
    `1 - train share` of any one AOI's blocks (so every AOI keeps train blocks). Then, while a land-cover
    class occurs in kept chips but in no train chip, the val/test block holding most such chips turns train.
    """
    touched: dict[Position, set[tuple[str, int, int]]] = {}
    home: dict[Position, tuple[str, int, int]] = {}
    occupied: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for pos, bounds in footprints.items():
        aoi = pos[0]
        origin = origins[aoi]
        touched[pos] = {(aoi, *b) for b in blocks_touched(bounds, cfg.block_m, cfg.buffer_m, origin)}
        occupied[aoi] |= blocks_touched(bounds, cfg.block_m, 0.0, origin)
        cx, cy = (bounds[0] + bounds[2]) / 2 - origin[0], (bounds[1] + bounds[3]) / 2 - origin[1]
        home[pos] = (aoi, math.floor(cx / cfg.block_m), math.floor(cy / cfg.block_m))
    # only blocks some footprint overlaps get a split: a grown footprint reaching into a block that no
    # chip overlaps cannot touch any chip there
    blocks = sorted((aoi, *b) for aoi, bs in occupied.items() for b in bs)
    rng = np.random.default_rng(seed)
    order = [blocks[i] for i in rng.permutation(len(blocks))]
    per_aoi = {aoi: len(bs) for aoi, bs in occupied.items()}
    train_share = 1 - cfg.val_fraction - cfg.test_fraction
    limit = {aoi: n - max(1, math.ceil(n * train_share - 1e-9)) for aoi, n in per_aoi.items()}
    held: dict[str, int] = defaultdict(int)
    split = {b: "train" for b in blocks}
    # strata: blocks with chips of the same grids (the fine grid covers a sub-area of the AOI), so that
    # each grid's tasks get their share of val and test blocks
    grids: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    for pos, bounds in footprints.items():
        for b in blocks_touched(bounds, cfg.block_m, 0.0, origins[pos[0]]):
            grids[(pos[0], *b)].add(pos[1])
    stratum = {b: tuple(sorted(grids[b])) for b in blocks}
    for name, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        for key in sorted(set(stratum.values())):
            members = [b for b in order if stratum[b] == key]
            quota = int(round(len(members) * fraction))
            for b in members:
                if quota and split[b] == "train" and held[b[0]] < limit[b[0]]:
                    split[b] = name
                    held[b[0]] += 1
                    quota -= 1

    def kept() -> dict[Position, str]:
        out = {}
        for pos, bs in touched.items():
            names = {split[b] for b in bs if b in split}
            if len(names) == 1:
                out[pos] = names.pop()
        return out

    while True:
        survivors = kept()
        train = set().union(*(classes.get(p, set()) for p, sp in survivors.items() if sp == "train"))
        missing = set().union(*(classes.get(p, set()) for p in survivors)) - train
        if not missing:
            break
        score: dict[tuple[str, int, int], int] = defaultdict(int)
        for p, sp in survivors.items():
            if sp != "train" and classes.get(p, set()) & missing:
                score[home[p]] += 1
        if not score:
            break
        flip = max(sorted(score), key=lambda b: score[b])
        log.info("pair: block %s turns train so classes %s occur in train", flip, sorted(missing))
        split[flip] = "train"
    return {pos: (sp, f"{home[pos][1]}_{home[pos][2]}") for pos, sp in kept().items()}


def blocks_touched(
    bounds: tuple[float, float, float, float], block_m: float, buffer_m: float, origin: tuple[float, float] = (0, 0)
) -> set[tuple[int, int]]:
    """Blocks (of a lattice anchored at `origin`) whose interior the footprint grown by `buffer_m` overlaps.

    A footprint that only touches a block's edge (buffer 0, chip edge on the block line) does not overlap it.
    """
    left, bottom, right, top = (
        bounds[0] - origin[0],
        bounds[1] - origin[1],
        bounds[2] - origin[0],
        bounds[3] - origin[1],
    )
    eps = 1e-6 * block_m
    x0 = math.floor((left - buffer_m) / block_m + eps)
    x1 = math.ceil((right + buffer_m) / block_m - eps) - 1
    y0 = math.floor((bottom - buffer_m) / block_m + eps)
    y1 = math.ceil((top + buffer_m) / block_m - eps) - 1
    return {(bx, by) for bx in range(x0, x1 + 1) for by in range(y0, y1 + 1)}


# ----------------------------------------------------------------------------------------------
# inputs


def load_accepted_rasters(coreg_dir: Path, gate_path: Path) -> pd.DataFrame:
    """rasters.parquet rows with status ok that the coreg gate accepted."""
    table_path = Path(coreg_dir) / "rasters.parquet"
    for p in (table_path, Path(gate_path)):
        if not p.is_file():
            raise PairError(f"{p}: not found (run `msgfm coregister` and `msgfm validate_coreg` first)")
    table = pd.read_parquet(table_path)
    gate = pd.read_parquet(gate_path)
    accepted = set(gate.loc[gate["accepted"].astype(bool), "id"].astype(str))
    table = table[(table["status"] == "ok") & table["id"].astype(str).isin(accepted)]
    if table.empty:
        raise PairError(f"{gate_path}: the coreg gate accepted no rasters; nothing to pair")
    return table.reset_index(drop=True)


def _validity(raster: _Raster) -> tuple[np.ndarray, np.ndarray | None]:
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


def _window_sum(a: np.ndarray, positions: list[tuple[int, int]], size: int) -> np.ndarray:
    """Sum of `a` over size x size windows at (row, col) positions, via an integral image."""
    ii = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    ii[1:, 1:] = np.cumsum(np.cumsum(a, axis=0), axis=1)
    r = np.array([p[0] for p in positions])
    c = np.array([p[1] for p in positions])
    return ii[r + size, c + size] - ii[r, c + size] - ii[r + size, c] + ii[r, c]


# ----------------------------------------------------------------------------------------------
# the stage


def pair(cfg: PairParams, *, coreg_dir: Path, coreg_gate: Path, seed: int = 0) -> pd.DataFrame:
    """Run the stage: chips, pairs, splits, store and manifest. Returns the manifest."""
    coreg_dir = Path(coreg_dir)
    table = load_accepted_rasters(coreg_dir, coreg_gate)
    size = cfg.chip_px
    by_id = {r["id"]: r for r in table.to_dict(orient="records")}
    images: dict[str, list[_Raster]] = defaultdict(list)
    labels_by_aoi: dict[tuple[str, str], Path] = {}
    grids: dict[tuple[str, str], Grid] = {}
    for r in by_id.values():
        grid = Grid(r["crs"], _affine(r["transform"]), int(r["width"]), int(r["height"]))
        key = (r["aoi"], r["grid"])
        if key in grids and grids[key] != grid:
            raise PairError(f"{coreg_dir}/rasters.parquet: {r['id']} is on another {r['grid']} grid than its AOI")
        grids[key] = grid
        if r["kind"] == "landcover":
            labels_by_aoi[key] = coreg_dir / r["path"]
        elif r["kind"] == "image":
            cloud = by_id.get(f"{r['id']}_cloud")
            images[r["aoi"]].append(_Raster(r, coreg_dir / r["path"], coreg_dir / cloud["path"] if cloud else None))

    # chip positions, blocks and splits
    positions: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for (aoi, grid_name), grid in sorted(grids.items()):
        pos = [
            (r, c)
            for r in range(0, grid.height - size + 1, cfg.stride_px)
            for c in range(0, grid.width - size + 1, cfg.stride_px)
        ]
        positions[(aoi, grid_name)] = pos
    origins = {}
    footprints: dict[Position, tuple[float, float, float, float]] = {}
    for (aoi, grid_name), pos in positions.items():
        anchor = grids.get((aoi, "s10")) or grids[(aoi, "fine")]
        origins[aoi] = (anchor.bounds[0], anchor.bounds[1])
        for r, c in pos:
            footprints[(aoi, grid_name, r, c)] = grids[(aoi, grid_name)].window_bounds(r, c, size)
    position_classes: dict[Position, set[int]] = {}
    for (aoi, grid_name), path in labels_by_aoi.items():
        with rasterio.open(path) as src:
            lab = src.read(1)
        for r, c in positions.get((aoi, grid_name), []):
            position_classes[(aoi, grid_name, r, c)] = {int(v) for v in np.unique(lab[r : r + size, c : c + size])} - {
                0
            }
    split_of_position = assign_splits(cfg, seed, footprints, origins, position_classes)

    # pass 1: which chips to keep, with cloud and nodata fractions
    rasters = [
        r for aoi in sorted(images) for r in sorted(images[aoi], key=lambda x: (x.row["sensor"], x.row["datetime"]))
    ]
    for raster in tqdm(rasters, desc="pair: scan", unit="raster"):
        aoi, grid_name = raster.row["aoi"], raster.row["grid"]
        pos = [p for p in positions.get((aoi, grid_name), []) if (aoi, grid_name, *p) in split_of_position]
        if not pos:
            continue
        valid, cloud = _validity(raster)
        nodata = 1 - _window_sum(valid.astype(np.float32), pos, size) / size**2
        cloudy = (
            _window_sum(((cloud == 1) | (cloud == 2)).astype(np.float32), pos, size) / size**2
            if cloud is not None
            else np.zeros(len(pos))
        )
        for p, nd, cf in zip(pos, nodata, cloudy, strict=True):
            if nd <= cfg.max_nodata_fraction:
                raster.chips[p] = {"nodata_fraction": float(nd), "cloud_fraction": float(cf)}

    # pairing per acquisition, then per chip
    for group in images.values():
        by_sensor: dict[str, list[_Raster]] = defaultdict(list)
        for r in group:
            by_sensor[r.row["sensor"]].append(r)
        for sensor, partner in _PAIR_OF.items():
            max_days = cfg.max_days if sensor == "s1" else cfg.fine_max_days
            chosen_by: dict[int, list[tuple[float, _Raster]]] = defaultdict(list)
            for r in by_sensor.get(sensor, []):
                best = _closest(r, by_sensor.get(partner, []), max_days)
                if best is None:
                    continue
                days, other = best
                chosen_by[id(other)].append((days, r))
                for p, chip in r.chips.items():
                    if p in other.chips:
                        chip["partner"] = (other, days)
            for other in by_sensor.get(partner, []):
                for days, r in sorted(chosen_by.get(id(other), []), key=lambda t: (t[0], t[1].row["datetime"])):
                    for p, chip in other.chips.items():
                        if "partner" not in chip and p in r.chips:
                            chip["partner"] = (r, days)

    # allocate the store
    counts: dict[str, int] = defaultdict(int)
    for raster in rasters:
        s = raster.row["sensor"]
        for chip in raster.chips.values():
            chip["store_index"] = counts[s]
            counts[s] += 1
    label_index: dict[tuple[str, str, int, int], int] = {}
    label_counts: dict[str, int] = defaultdict(int)
    for raster in rasters:
        key = (raster.row["aoi"], raster.row["grid"])
        if key not in labels_by_aoi:
            continue
        for p in raster.chips:
            lk = (*key, *p)
            if lk not in label_index:
                label_index[lk] = label_counts[key[1]]
                label_counts[key[1]] += 1
    if not counts:
        raise PairError("no chip passed pair.max_nodata_fraction and the split buffer; nothing to store")
    bands = {r.row["sensor"]: tuple(r.row["band_names"]) for r in rasters}
    for r in rasters:
        if tuple(r.row["band_names"]) != bands[r.row["sensor"]]:
            raise PairError(f"{r.path}: bands {list(r.row['band_names'])} differ from other {r.row['sensor']} rasters")
    sensors = [SensorArray(s, counts[s], bands[s], get_sensor(s).bands[0].dtype) for s in sorted(counts)]
    writer = ChipStoreWriter(cfg.out_dir, size, sensors, {g: label_counts.get(g, 0) for g in ("s10", "fine")})

    # pass 2: labels, then chips, streamed raster by raster
    label_classes: dict[tuple[str, str, int, int], list[int]] = {}
    for key, path in sorted(labels_by_aoi.items()):
        with rasterio.open(path) as src:
            lab = src.read(1)
        for (aoi, grid_name, r, c), idx in label_index.items():
            if (aoi, grid_name) == key:
                chip = lab[r : r + size, c : c + size]
                writer.write_label(grid_name, idx, chip)
                label_classes[(aoi, grid_name, r, c)] = sorted(int(v) for v in np.unique(chip) if v != 0)
    records = []
    for raster in tqdm(rasters, desc="pair: chips", unit="raster"):
        if not raster.chips:
            continue
        row = raster.row
        sensor = get_sensor(row["sensor"])
        mean, std = sensor.stats(list(row["band_names"]))
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
            ok = mask != MASK_NODATA
            norm = (pixels.astype(np.float32) - mean[:, None, None]) / std[:, None, None]
            values = norm[:, ok]
            split, block = split_of_position[(row["aoi"], row["grid"], r, c)]
            bounds = grid.window_bounds(r, c, size)
            partner, days = chip.get("partner", (None, float("nan")))
            lk = (row["aoi"], row["grid"], r, c)
            records.append(
                {
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
                    "split": split,
                    "block": block,
                    "store_index": chip["store_index"],
                    "partner_id": _chip_id(partner.row, r, c) if partner else None,
                    "partner_sensor": partner.row["sensor"] if partner else None,
                    "partner_index": partner.chips[(r, c)]["store_index"] if partner else -1,
                    "partner_days": float(days),
                    "paired": partner is not None,
                    "cloud_fraction": chip["cloud_fraction"],
                    "nodata_fraction": chip["nodata_fraction"],
                    "labels": label_classes.get(lk, []),
                    "label_index": label_index.get(lk, -1),
                    "mean": float(values.mean()) if values.size else float("nan"),
                    "std": float(values.std()) if values.size else float("nan"),
                }
            )
    manifest = pd.DataFrame(records, columns=MANIFEST_COLUMNS)
    # the store's index.json records the manifest's hash and is swapped in first, the manifest right after:
    # a kill between the two renames leaves a store whose hash the old manifest does not match, which
    # every reader (chipstore.check_manifest) refuses until pair runs again
    with atomic_path(cfg.manifest, suffix=".parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
        writer.commit({"manifest": str(cfg.manifest), "chips": len(manifest), MANIFEST_HASH_KEY: sha256_file(tmp)})
        kill_point("pair:store_committed")
    log.info(
        "pair: %d chips (%s), %d paired; splits %s",
        len(manifest),
        dict(counts),
        int(manifest["paired"].sum()),
        manifest["split"].value_counts().to_dict(),
    )
    return manifest


def _affine(t: Any):
    from affine import Affine

    return Affine(*list(t)[:6])


def _chip_id(row: dict[str, Any], r: int, c: int) -> str:
    return f"{row['sensor']}_{row['aoi']}_{row['date'].replace('-', '')}_r{r:05d}_c{c:05d}"


def _closest(raster: _Raster, candidates: list[_Raster], max_days: float) -> tuple[float, _Raster] | None:
    """The candidate acquisition closest in time within `max_days` (earlier wins ties), with the gap in days."""
    best = None
    t = pd.Timestamp(raster.row["datetime"])
    for other in candidates:
        days = abs((pd.Timestamp(other.row["datetime"]) - t).total_seconds()) / 86400
        if days <= max_days and (best is None or (days, other.row["datetime"]) < (best[0], best[1].row["datetime"])):
            best = (days, other)
    return best
