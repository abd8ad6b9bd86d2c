"""`msgfm coregister`: every sensor of an AOI onto one grid, with sub-pixel fine alignment.

Per AOI one CRS, the UTM zone of its Sentinel-2 tile. Sentinel-2 (all 12 L2A bands, 20 m and 60 m
ones resampled) and Sentinel-1 go on the S2 10 m grid; aerial RGB and the DSM go on one fine grid
in the same CRS at `coregister.fine_gsd_m` (msgfm.coreg.aoi_grids). Each raster is warped once with
rasterio (msgfm.coreg.warp).

Fine alignment: georeferencing alone leaves S1 and the DSM a few pixels off their references. The
residual shift is estimated by sub-pixel phase correlation (scikit-image, msgfm.coreg.shifts) between
features both sensors share, gradient magnitudes rather than raw intensities (S2 optical bands vs
despeckled S1 backscatter; RGB chromaticity, which cast shadows barely change, vs the detrended DSM,
whose edges are buildings and crowns rather than terrain: msgfm.coreg.features), and folded into the
destination transform of the raster's single warp (msgfm.coreg.strategies). The reference feature is
the mean over the `reference_dates` clearest S2 (RGB) acquisitions of the AOI (largest cloud-free share
of the match window), so its cost does not grow with the length of the time series.

Reads the download ledger (`data/raw/acquisitions.parquet`) restricted to the ids the raw gate
accepted (msgfm.coreg.inputs); writes `data/coreg/{aoi}/...` tiled GeoTIFFs, `data/coreg/rasters.parquet`
(one row per raster, failures included with their reason) and `data/reports/coregister.json`.
Restartable: each raster leaves a JSON record beside its GeoTIFF, and a rerun with the same inputs and
params reuses it (msgfm.coreg.records).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rasterio
from threadpoolctl import threadpool_limits

from msgfm.cluster.tasks import map_ordered
from msgfm.coreg.aoi_grids import FINE, S10, choose_grids, write_grids
from msgfm.coreg.inputs import CoregisterError, Item, load_accepted_items, load_truth, refusal
from msgfm.coreg.records import RASTER_COLUMNS, RasterStore, empty_row, raster_name
from msgfm.coreg.strategies import (
    AOIContext,
    Candidate,
    Outcome,
    coregister_landcover,
    coregister_rgb,
    coregister_s2,
    coregister_shifted,
    keep_clearest,
    shifted_sensors,
)
from msgfm.geo.io import atomic_path, atomic_write_json, environment_fault

if TYPE_CHECKING:
    from msgfm.config import CoregisterParams, RayParams

log = logging.getLogger(__name__)

Task = tuple[Item, Callable[[AOIContext, Item], Outcome]]
"""One acquisition and the strategy that co-registers it."""

TABLE_ORDER = ("s2", "rgb", "s1", "dsm", "landcover")
"""The sensors the stage knows, in the order rasters.parquet lists them (the sequential stage's order)."""


def coregister(
    cfg: CoregisterParams,
    *,
    ledger: Path,
    raw_gate: Path,
    raw_dir: Path,
    out_dir: Path,
    report: Path,
    truth_dir: Path | None = None,
    ray_cfg: RayParams | None = None,
) -> pd.DataFrame:
    """Run the stage: co-register all accepted acquisitions, write rasters.parquet and the report.

    The AOIs are independent: with `ray_cfg.data_workers > 1` each is a Ray task (msgfm.cluster.tasks);
    their rows are gathered in AOI order, so the outputs are the same bytes as in process.
    """
    start = time.perf_counter()
    items = load_accepted_items(Path(ledger), Path(raw_gate), Path(raw_dir))
    if not items:
        raise CoregisterError(f"{raw_gate}: the raw gate accepted no acquisitions; nothing to co-register")
    store = RasterStore(Path(out_dir), cfg.compress)
    rows: list[dict] = []
    by_aoi: dict[str, list[Item]] = {}
    for item in items:
        if reason := store.aoi_problem(item.aoi) or refusal(item, cfg.max_source_px):
            rows.append(_refused_row(item, reason))
        else:
            by_aoi.setdefault(item.aoi, []).append(item)
    jobs = [(cfg, Path(out_dir), truth_dir, aoi, group) for aoi, group in sorted(by_aoi.items())]
    done = map_ordered(
        coregister_aoi,
        jobs,
        workers=ray_cfg.data_workers if ray_cfg else 1,
        ray_cfg=ray_cfg,
        weights=[len(job[-1]) for job in jobs],
        desc="coregister",
        unit="raster",
    )
    for aoi_rows, _ in done:
        rows.extend(aoi_rows)
    table = pd.DataFrame(rows, columns=RASTER_COLUMNS)
    table["datetime"] = pd.to_datetime(table["datetime"], utc=True)
    with atomic_path(Path(out_dir) / "rasters.parquet", suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    seconds = time.perf_counter() - start
    pixels = sum(p for _, p in done)
    atomic_write_json(report, shift_report(table, pixels=pixels, seconds=seconds))
    log.info(
        "coregister: %d rasters ok, %d failed",
        int((table["status"] == "ok").sum()),
        int((table["status"] != "ok").sum()),
    )
    return table


def coregister_aoi(
    cfg: CoregisterParams, out_dir: Path, truth_dir: Path | None, aoi: str, items: list[Item]
) -> tuple[list[dict], int]:
    """One AOI's rows and the pixels it wrote: the unit of work, in process or as a Ray task."""
    store = RasterStore(out_dir, cfg.compress)
    log.info("AOI %s: %d acquisitions", aoi, len(items))
    # one GDAL environment per AOI instead of one per open/warp call, and single-threaded BLAS: the phase
    # correlation's small matrix DFTs cost ten times more CPU when OpenBLAS threads contend for 2 cores
    with rasterio.Env(), threadpool_limits(1, user_api="blas"):
        rows = run_aoi(cfg, store, truth_dir, aoi, items)
    return rows, store.pixels


def run_aoi(
    cfg: CoregisterParams,
    store: RasterStore,
    truth_dir: Path | None,
    aoi: str,
    items: list[Item],
) -> list[dict]:
    """Co-register every accepted acquisition of one AOI; failures become rows with a reason.

    Two phases: S2, RGB and land cover (they need only the grids), then S1 and DSM (they need the
    references, built from the clearest S2 and RGB acquisitions of the first phase).
    """
    items, refused_rows = _name_clashes(items)
    by_sensor: dict[str, list[Item]] = {}
    for item in items:
        by_sensor.setdefault(item.sensor, []).append(item)
    biome = next((i.biome for i in items if i.biome), "")
    truth = load_truth(truth_dir, aoi)
    grids, s2_items, refused = choose_grids(by_sensor, cfg.fine_gsd_m)
    refused_rows += [_refused_row(i, refused[i.id]) for i in by_sensor.get("s2", []) if i.id in refused]
    ctx = AOIContext(cfg, store, aoi, biome, truth, grids)
    references = {
        "rgb": [(item, functools.partial(coregister_rgb, order=i)) for i, item in enumerate(by_sensor.get("rgb", []))],
        "landcover": [(item, coregister_landcover) for item in by_sensor.get("landcover", [])],
        "s2": [(item, functools.partial(coregister_s2, order=i)) for i, item in enumerate(s2_items)],
    }
    done = _run_tasks(ctx, references)
    for grid_name, sensor in ((S10, "s2"), (FINE, "rgb")):
        chosen: list[Candidate] = []
        for outcome in done[sensor]:
            chosen = keep_clearest(chosen, outcome.candidate, cfg.reference_dates)
        if chosen:
            ctx.set_reference(grid_name, chosen)
    shifted = {
        sensor: [(item, functools.partial(coregister_shifted, spec=spec)) for item in by_sensor.get(sensor, [])]
        for sensor, spec in shifted_sensors(cfg).items()
    }
    done |= _run_tasks(ctx, shifted)
    rows = [r for sensor in TABLE_ORDER for outcome in done[sensor] for r in outcome.rows]
    write_grids(store.out_dir, aoi, grids)
    return rows + refused_rows + _unknown_sensor_rows(by_sensor)


def _name_clashes(items: list[Item]) -> tuple[list[Item], list[dict]]:
    """The acquisitions whose output name is free, and a refused row for each later one whose name is taken."""
    owners: dict[str, str] = {}
    kept, refused = [], []
    for item in items:
        name = raster_name(item)
        if name in owners:
            reason = f"output name {item.aoi}/{name} is already taken by {owners[name]!r}; one acquisition per name"
            refused.append(_refused_row(item, reason))
        else:
            owners[name] = item.id
            kept.append(item)
    return kept, refused


def _run_tasks(ctx: AOIContext, groups: dict[str, list[Task]]) -> dict[str, list[Outcome]]:
    """Run each group's tasks in order; their outcomes by group."""
    results: dict[str, list[Outcome]] = {name: [] for name in groups}
    for name, tasks in groups.items():
        for item, strategy in tasks:
            results[name].append(_guarded(ctx, item, strategy))
    return results


def _guarded(ctx: AOIContext, item: Item, strategy: Callable[[AOIContext, Item], Outcome]) -> Outcome:
    """Run one acquisition's strategy; a read or warp failure becomes a row with its reason, a full disk aborts."""
    try:
        outcome = strategy(ctx, item)
    except (OSError, rasterio.errors.RasterioError, ValueError) as e:
        if (fault := environment_fault(e)) is not None:
            raise fault from e  # a full or read-only disk is not a property of this acquisition
        row = empty_row(item, item.id, "image", S10 if item.sensor in ("s1", "s2") else FINE)
        row["error"] = f"{type(e).__name__}: {e}"
        log.warning("%s: %s", item.id, row["error"])
        outcome = Outcome([row])
    for r in outcome.rows:
        if r["status"] != "ok":
            log.warning("%s: quarantined: %s", r["id"], r["error"])
    return outcome


def _refused_row(item: Item, reason: str) -> dict:
    """The failed row of an acquisition refused before any read: an AOI name that is no folder, or `refusal`."""
    row = empty_row(item, item.id, "image", S10 if item.sensor in ("s1", "s2") else FINE)
    row["error"] = reason
    log.warning("%s: quarantined: %s", item.id, reason)
    return row


def _unknown_sensor_rows(by_sensor: dict[str, list[Item]]) -> list[dict]:
    """A failed row for each acquisition of a sensor the stage does not know."""
    rows = []
    for sensor, group in by_sensor.items():
        if sensor not in TABLE_ORDER:
            for item in group:
                row = empty_row(item, item.id, "image", "")
                row["error"] = f"unknown sensor {sensor!r}"
                rows.append(row)
    return rows


def shift_report(table: pd.DataFrame, *, pixels: int, seconds: float) -> dict[str, Any]:
    """Shift errors against the truth (median absolute error in px, per sensor and overall) and counts."""
    report: dict[str, Any] = {
        "rasters": int(len(table)),
        "ok": int((table["status"] == "ok").sum()),
        "failed": int((table["status"] != "ok").sum()),
        "pixels_written": int(pixels),
        "seconds": round(seconds, 3),
    }
    scored = table[(table["status"] == "ok") & table["truth_dx_px"].notna() & table["shift_dx_px"].notna()]
    errors_all = []
    for sensor in ("s1", "dsm"):
        s = scored[scored["sensor"] == sensor]
        if s.empty:
            continue
        ex = (s["shift_dx_px"] - s["truth_dx_px"]).abs()
        ey = (s["shift_dy_px"] - s["truth_dy_px"]).abs()
        err = np.hypot(ex, ey)
        errors_all.extend(err.tolist())
        report[sensor] = {
            "n": int(len(s)),
            "median_abs_error_px": round(float(np.median(err)), 4),
            "max_abs_error_px": round(float(err.max()), 4),
            "median_abs_error_x_px": round(float(ex.median()), 4),
            "median_abs_error_y_px": round(float(ey.median()), 4),
        }
    report["median_abs_error_px"] = round(float(np.median(errors_all)), 4) if errors_all else None
    report["scored_rasters"] = len(errors_all)
    return report
