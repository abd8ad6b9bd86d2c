"""`msgfm pair`: cut co-registered rasters into chips, pair sensors, split by spatial blocks, fill the store.

The stage runs in phases: load the rasters the coreg gate accepted; lay out chip positions on each
AOI grid (`msgfm.chips.positions`) and give them spatial-block splits (`msgfm.chips.splits`); scan
each raster's validity to keep the chips with little nodata; pair acquisitions in time
(`msgfm.chips.partners`); number the kept chips; cut each AOI's labels and chips into its shard of the
store; write the store and `data/manifest.parquet`. Chips without a partner stay in the manifest as
unpaired single-sensor samples.

Writes the chip store (`msgfm.chips.store`) and `data/manifest.parquet`, whose SHA-256 the store's
`index.json` records so readers can tell the two belong together. Two passes over the rasters, each
one unit of work per AOI (`msgfm.chips.cutting`): the first reads validity to decide which chips to
keep (so each shard can be preallocated), the second streams the AOI's chips into its shard. With
`ray.data_workers > 1` the AOIs of each pass run as Ray tasks (msgfm.cluster.tasks); results come back
in AOI order, so the store and manifest are the same bytes as in process.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from affine import Affine

from msgfm.chips.cutting import MANIFEST_COLUMNS, cut_aoi, scan_aoi
from msgfm.chips.partners import Raster, choose_partners
from msgfm.chips.positions import GridKey, Position, chip_footprints, chip_positions, position_classes
from msgfm.chips.splits import assign_splits
from msgfm.chips.store import MANIFEST_HASH_KEY, ChipStoreWriter
from msgfm.cluster.tasks import map_ordered
from msgfm.decisions import accepted_ids
from msgfm.faults import kill_point
from msgfm.geo.grids import Grid
from msgfm.geo.io import atomic_path, sha256_file

if TYPE_CHECKING:
    from msgfm.config import PairParams, RayParams

log = logging.getLogger(__name__)


class PairError(RuntimeError):
    """The stage cannot run (missing inputs, nothing accepted); the message names the file."""


@dataclass
class _Inputs:
    """The accepted rasters, grouped: image rasters per AOI, land-cover rasters and the grid per AOI grid."""

    images: dict[str, list[Raster]]
    labels: dict[GridKey, Path]
    grids: dict[GridKey, Grid]

    def in_store_order(self, aoi: str) -> list[Raster]:
        """An AOI's image rasters by sensor and time (AOIs go in sorted order): the order of the store indices."""
        return sorted(self.images[aoi], key=lambda x: (x.row["sensor"], x.row["datetime"]))


def pair(
    cfg: PairParams, *, coreg_dir: Path, coreg_gate: Path, seed: int = 0, ray_cfg: RayParams | None = None
) -> pd.DataFrame:
    """Run the stage: chips, pairs, splits, store and manifest. Returns the manifest."""
    coreg_dir = Path(coreg_dir)
    # Ray workers get absolute paths: a worker's working directory need not be this process's
    inputs = _group(coreg_dir.resolve(), load_accepted_rasters(coreg_dir, coreg_gate))
    positions = chip_positions(inputs.grids, cfg.chip_px, cfg.stride_px)
    footprints, origins = chip_footprints(inputs.grids, positions, cfg.chip_px)
    classes = position_classes(inputs.labels, positions, cfg.chip_px, cfg.label_min_fraction)
    splits = assign_splits(cfg, seed, footprints, origins, classes)
    groups = {aoi: inputs.in_store_order(aoi) for aoi in sorted(inputs.images)}
    run = {"workers": ray_cfg.data_workers if ray_cfg else 1, "ray_cfg": ray_cfg, "unit": "raster"}
    aoi_positions, aoi_splits = _by_aoi(positions), _by_aoi(splits)
    scans = [(cfg, g, aoi_positions.get(a, {}), set(aoi_splits.get(a, {}))) for a, g in groups.items()]
    kept = map_ordered(scan_aoi, scans, weights=[len(job[1]) for job in scans], desc="pair: scan", **run)
    for group, chips in zip(groups.values(), kept, strict=True):
        for raster, raster_chips in zip(group, chips, strict=True):
            raster.chips = raster_chips
        choose_partners(group, cfg.max_days, cfg.fine_max_days)
    rasters = [r for g in groups.values() for r in g]
    counts, label_index = _number_chips(rasters, inputs.labels)
    if not counts:
        raise PairError("no chip passed pair.max_nodata_fraction and the split buffer; nothing to store")
    _check_bands(rasters)
    writer = ChipStoreWriter(cfg.out_dir, cfg.chip_px)
    per_aoi = [_by_aoi(d) for d in (inputs.labels, label_index, inputs.grids, splits)]
    cuts = [
        (cfg, writer.tmp.resolve(), f"{n:05d}", g, *(d.get(a, {}) for d in per_aoi))
        for n, (a, g) in enumerate((a, g) for a, g in groups.items() if any(r.chips for r in g))
    ]
    cut = map_ordered(cut_aoi, cuts, weights=[len(job[3]) for job in cuts], desc="pair: chips", **run)
    manifest = pd.DataFrame([rec for _, records in cut for rec in records], columns=MANIFEST_COLUMNS)
    _commit(cfg, writer, [shard for shard, _ in cut], manifest)
    log.info(
        "pair: %d chips (%s) in %d shards, %d paired; splits %s",
        len(manifest),
        dict(counts),
        len(cut),
        int(manifest["paired"].sum()),
        manifest["split"].value_counts().to_dict(),
    )
    return manifest


def _by_aoi(by_key: dict[tuple, Any]) -> dict[str, dict[tuple, Any]]:
    """A dict keyed by (aoi, ...) tuples split into one dict per AOI: what each AOI's job is sent."""
    out: dict[str, dict[tuple, Any]] = defaultdict(dict)
    for key, value in by_key.items():
        out[key[0]][key] = value
    return out


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


def _check_bands(rasters: list[Raster]) -> None:
    """Every raster of a sensor must have the same bands: they share the store's arrays."""
    bands = {r.row["sensor"]: tuple(r.row["band_names"]) for r in rasters}
    for r in rasters:
        if tuple(r.row["band_names"]) != bands[r.row["sensor"]]:
            raise PairError(f"{r.path}: bands {list(r.row['band_names'])} differ from other {r.row['sensor']} rasters")


def _commit(cfg: PairParams, writer: ChipStoreWriter, shards: list[dict[str, Any]], manifest: pd.DataFrame) -> None:
    """Swap the store in, then write the manifest whose hash the store's index.json records."""
    # the store's index.json records the manifest's hash and is swapped in first, the manifest right after:
    # a kill between the two renames leaves a store whose hash the old manifest does not match, which
    # every reader (msgfm.chips.store.check_manifest) refuses until pair runs again
    with atomic_path(cfg.manifest, suffix=".parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
        extra = {"manifest": str(cfg.manifest), "chips": len(manifest), MANIFEST_HASH_KEY: sha256_file(tmp)}
        writer.commit(shards, extra)
        kill_point("pair:store_committed")


def _affine(t: Any) -> Affine:
    """The Affine of a rasters.parquet `transform` (its first six coefficients)."""

    return Affine(*list(t)[:6])
