"""`msgfm coregister`: every sensor of an AOI onto one grid, with sub-pixel fine alignment.

Per AOI one CRS, the UTM zone of its Sentinel-2 tile. Sentinel-2 (all 12 L2A bands, 20 m and 60 m
ones resampled) and Sentinel-1 go on the S2 10 m grid; aerial RGB and the DSM go on one fine grid
in the same CRS at `coregister.fine_gsd_m`. Each raster is warped once with rasterio.

Fine alignment: georeferencing alone leaves S1 and the DSM a few pixels off their references. The
residual shift is estimated by sub-pixel phase correlation (scikit-image) between features both
sensors share, gradient magnitudes rather than raw intensities (S2 optical bands vs despeckled S1
backscatter; RGB chromaticity, which cast shadows barely change, vs the detrended DSM, whose edges
are buildings and crowns rather than terrain), and folded into the destination transform of the
raster's single warp. The reference feature is the mean over the `reference_dates` clearest S2 (RGB)
acquisitions of the AOI (largest cloud-free share of the match window), so its cost does not grow
with the length of the time series. Shift convention: (dx, dy) in reference-grid pixels is where the sensor's
content appears, relative to where it belongs, when warped by its georeference alone (x to the
right, y down); correcting it moves the content by (-dx, -dy).

Reads the download ledger (`data/raw/acquisitions.parquet`) restricted to the ids the raw gate
accepted; writes `data/coreg/{aoi}/...` COGs, `data/coreg/rasters.parquet` (one row per raster,
failures included with their reason) and `data/reports/coregister.json`. Restartable: each raster
leaves a JSON record beside its COG, and a rerun with the same inputs and params reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from msgfm.coreg.features import dsm_feature, gradient_feature, mean_reference, rgb_feature
from msgfm.coreg.shifts import estimate_shift, match_window
from msgfm.coreg.warp import warp_files, write_tiled_tiff
from msgfm.geo.grids import Grid, bounds_in, intersects, warp_to_grid
from msgfm.geo.io import atomic_path, atomic_write_json
from msgfm.sensors import S2_L2A_BANDS, get_sensor

if TYPE_CHECKING:
    from msgfm.config import CoregisterParams

log = logging.getLogger(__name__)

RASTER_COLUMNS = [
    "id", "item_id", "aoi", "biome", "sensor", "kind", "datetime", "date", "path", "grid", "crs", "transform",
    "width", "height", "count", "band_names", "nodata", "reference_id", "shift_dx_px", "shift_dy_px",
    "shift_error", "truth_dx_px", "truth_dy_px", "valid_fraction", "status", "error",
]  # fmt: skip
"""Columns of data/coreg/rasters.parquet (see docs/data-layout.md)."""

S10, FINE = "s10", "fine"
GRIDS_NAME = "grids.json"
"""Per AOI, `data/coreg/{aoi}/grids.json` holds the reference grids every raster must lie on."""


class CoregisterError(RuntimeError):
    """The stage cannot run at all (missing ledger or gate table); the message names the file."""


@dataclass
class _Item:
    """One accepted acquisition from the ledger, with absolute asset paths."""

    id: str
    sensor: str
    aoi: str
    biome: str
    datetime: pd.Timestamp
    assets: dict[str, Path]

    @property
    def date(self) -> str:
        return self.datetime.strftime("%Y%m%d")


# ----------------------------------------------------------------------------------------------
# inputs


def load_accepted_items(ledger_path: Path, gate_path: Path, raw_dir: Path) -> list[_Item]:
    """Ledger rows with status ok that the raw gate accepted, with asset paths resolved under raw_dir."""
    for p in (ledger_path, gate_path):
        if not p.is_file():
            raise CoregisterError(f"{p}: not found (run `msgfm download` and `msgfm validate_raw` first)")
    ledger = pd.read_parquet(ledger_path)
    gate = pd.read_parquet(gate_path)
    accepted = set(gate.loc[gate["accepted"].astype(bool), "id"].astype(str))
    ledger = ledger[(ledger["status"] == "ok") & ledger["id"].astype(str).isin(accepted)]
    items = []
    for row in ledger.itertuples(index=False):
        assets = row.assets if isinstance(row.assets, dict) else json.loads(row.assets)
        items.append(
            _Item(
                id=str(row.id),
                sensor=str(row.sensor),
                aoi=str(row.aoi),
                biome=str(getattr(row, "biome", "") or ""),
                datetime=pd.Timestamp(row.datetime).tz_localize("UTC")
                if pd.Timestamp(row.datetime).tzinfo is None
                else pd.Timestamp(row.datetime).tz_convert("UTC"),
                assets={k: raw_dir / v for k, v in assets.items()},
            )
        )
    return sorted(items, key=lambda i: (i.aoi, i.sensor, i.datetime, i.id))


def load_truth(truth_dir: Path | None, aoi: str) -> dict[str, tuple[float, float]]:
    """True misregistration per item id from the simulator's sidecar, in this module's convention ({} if none).

    The sidecar (docs/simulator.md) gives the shift to apply to the raster to align it, (dx_px, dy_px):
    the raster's pixel (r, c) shows the ground of reference pixel (r + dy_px, c + dx_px). So the content
    of reference pixel p appears at p - (dx_px, dy_px): our shift is its negation.
    """
    if truth_dir is None:
        return {}
    path = Path(truth_dir) / f"{aoi}.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    entries = doc.get("shifts", doc) if isinstance(doc, dict) else {}
    truth = {}
    for item_id, t in entries.items():
        if isinstance(t, dict) and "dx_px" in t and "dy_px" in t:
            truth[item_id] = (-float(t["dx_px"]), -float(t["dy_px"]))
    return truth


# ----------------------------------------------------------------------------------------------
# the stage


@dataclass
class _Candidate:
    """A reference acquisition's pixels in the match window, kept until the clearest ones are chosen."""

    raster_id: str
    order: int
    """Position of the acquisition in the AOI's item order, which fixes the order features are summed in."""
    sensor: str
    bands: np.ndarray
    valid: np.ndarray

    @property
    def rank(self) -> tuple[float, int]:
        """Sort key: clearest first (largest valid share of the window), then the earlier acquisition."""
        return -float(self.valid.mean()), self.order


def keep_clearest(candidates: list[_Candidate], new: _Candidate | None, n: int) -> list[_Candidate]:
    """The `n` clearest of `candidates` and `new`: a reference built from them skips mostly clouded dates."""
    if new is None:
        return candidates
    return sorted([*candidates, new], key=lambda c: c.rank)[:n]


class _AOIContext:
    """Grids, reference features and settings shared by the rasters of one AOI."""

    def __init__(self, cfg: CoregisterParams, out_dir: Path, aoi: str, biome: str, truth: dict):
        self.cfg = cfg
        self.out_dir = out_dir
        self.aoi = aoi
        self.biome = biome
        self.truth = truth
        self.grids: dict[str, Grid] = {}
        self.references: dict[str, np.ndarray] = {}
        self.ref_ids: dict[str, list[str]] = {S10: [], FINE: []}

    def set_reference(self, grid: str, chosen: list[_Candidate], features: list[np.ndarray]) -> None:
        """The reference of a grid (S2 for the 10 m grid, RGB for the fine grid) from the chosen acquisitions."""
        self.references[grid] = mean_reference(features, [c.valid for c in chosen])
        self.ref_ids[grid] = [c.raster_id for c in chosen]

    def reference(self, grid: str) -> np.ndarray | None:
        """The mean reference feature of a grid, None before any reference acquisition was co-registered."""
        return self.references.get(grid)


def _params_key(cfg: CoregisterParams, *parts: Any) -> str:
    """Hash of the params and inputs a raster depends on, to reuse its output on a rerun."""
    blob = json.dumps([cfg.model_dump(mode="json"), *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_stamp(paths: Iterable[Path]) -> list:
    """(path, size, mtime) of each input, (path, None) when missing: a changed input invalidates the reuse."""
    stamps = []
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            stamps.append((str(p), None))
        else:
            stamps.append((str(p), st.st_size, st.st_mtime_ns))
    return stamps


def _empty_row(item: _Item, raster_id: str, kind: str, grid: str) -> dict[str, Any]:
    return {
        "id": raster_id,
        "item_id": item.id,
        "aoi": item.aoi,
        "biome": item.biome,
        "sensor": item.sensor,
        "kind": kind,
        "datetime": item.datetime,
        "date": item.datetime.strftime("%Y-%m-%d"),
        "path": "",
        "grid": grid,
        "crs": "",
        "transform": [],
        "width": 0,
        "height": 0,
        "count": 0,
        "band_names": [],
        "nodata": float("nan"),
        "reference_id": "",
        "shift_dx_px": float("nan"),
        "shift_dy_px": float("nan"),
        "shift_error": float("nan"),
        "truth_dx_px": float("nan"),
        "truth_dy_px": float("nan"),
        "valid_fraction": 0.0,
        "status": "failed",
        "error": "",
    }


class Coregistrar:
    """Co-registers the accepted acquisitions of every AOI; one instance per stage run."""

    def __init__(self, cfg: CoregisterParams, out_dir: Path, truth_dir: Path | None = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.truth_dir = truth_dir
        self.pixels = 0

    # -- outputs ----------------------------------------------------------------------------

    def _record_path(self, rel: str) -> Path:
        return self.out_dir / (rel[: -len(".tif")] + ".json")

    def _reuse(self, rel: str, key: str) -> dict[str, Any] | None:
        """The stored row of a raster written by an earlier run with the same key, if still valid."""
        record = self._record_path(rel)
        if not record.is_file() or not (self.out_dir / rel).is_file():
            return None
        try:
            stored = json.loads(record.read_text())
        except json.JSONDecodeError:
            return None
        if stored.get("key") != key:
            return None
        row = stored["row"]
        row["datetime"] = pd.Timestamp(row["datetime"])
        return row

    def _write(self, rel: str, key: str, array: np.ndarray, grid: Grid, row: dict, nodata: float | None) -> dict:
        write_tiled_tiff(
            self.out_dir / rel, array, grid, nodata=nodata, band_names=row["band_names"], compress=self.cfg.compress
        )
        row.update(
            path=rel,
            crs=grid.crs,
            transform=list(grid.transform)[:6],
            width=grid.width,
            height=grid.height,
            count=int(array.shape[0]),
            nodata=float("nan") if nodata is None else float(nodata),
            status="ok",
        )
        self.pixels += int(array.size)
        atomic_write_json(self._record_path(rel), {"key": key, "row": row})
        return row

    # -- per sensor ---------------------------------------------------------------------------

    def _s2(self, ctx: _AOIContext, item: _Item, order: int) -> tuple[list[dict], _Candidate | None]:
        """All 12 bands (and the cloud mask) on the 10 m grid; the feature bands' window as a reference candidate."""
        grid = ctx.grids[S10]
        rel = f"{item.aoi}/s2_{item.date}.tif"
        cloud_rel = f"{item.aoi}/s2_{item.date}_cloud.tif"
        row = _empty_row(item, item.id, "image", S10)
        row["band_names"] = list(S2_L2A_BANDS)
        missing = [b for b in S2_L2A_BANDS if b not in item.assets]
        if missing:
            row["error"] = f"missing S2 band assets {missing}"
            return [row], None
        paths = [item.assets[b] for b in S2_L2A_BANDS]
        has_cloud = "cloud_mask" in item.assets
        key = _params_key(
            self.cfg, grid.to_dict(), _file_stamp(paths + ([item.assets["cloud_mask"]] if has_cloud else []))
        )
        reused = self._reuse(rel, key)
        cloud_reused = self._reuse(cloud_rel, key) if has_cloud else None
        if reused is not None and (cloud_reused is not None or not has_cloud):
            with rasterio.open(self.out_dir / rel) as src:
                data = src.read()
            cloud = None
            if has_cloud:
                with rasterio.open(self.out_dir / cloud_rel) as src:
                    cloud = src.read(1)
            rows = [reused] + ([cloud_reused] if has_cloud else [])
        else:
            resampling = Resampling[self.cfg.s2_resampling]
            with contextlib.ExitStack() as stack:
                sources = [stack.enter_context(rasterio.open(path)) for path in paths]
                pixels = [src.read([1]) for src in sources]
                data = warp_files(sources, pixels, grid, resampling=resampling, dtype="uint16", nodata=0)
            valid = np.all(data != 0, axis=0)
            row["valid_fraction"] = float(valid.mean())
            if not valid.any():
                row["error"] = "all nodata on the AOI grid after warping"
                return [row], None
            rows = [self._write(rel, key, data, grid, row, nodata=0)]
            cloud = None
            if has_cloud:
                with rasterio.open(item.assets["cloud_mask"]) as src:
                    cloud = warp_to_grid(src, grid, resampling=Resampling.nearest, dtype="uint8", nodata=255)
                cloud_row = _empty_row(item, f"{item.id}_cloud", "cloud_mask", S10)
                cloud_row["band_names"] = ["cloud_mask"]
                cloud_row["valid_fraction"] = float((cloud[0] != 255).mean())
                rows.append(self._write(cloud_rel, key, cloud, grid, cloud_row, nodata=255))
                cloud = cloud[0]
        valid = np.all(data != 0, axis=0)
        if cloud is not None:
            valid &= cloud == 0
        feature_idx = [S2_L2A_BANDS.index(b) for b in self.cfg.s2_feature_bands]
        win, _ = match_window(grid, self.cfg.match_px)
        # copies of the window only: a candidate must not keep the whole raster alive
        return rows, _Candidate(item.id, order, "s2", data[feature_idx, win[0], win[1]], valid[win].copy())

    def _reference_feature(self, candidate: _Candidate) -> np.ndarray:
        """Gradient feature of a chosen reference acquisition (S2 feature bands, or RGB chromaticity)."""
        if candidate.sensor == "rgb":
            return rgb_feature(candidate.bands, candidate.valid, self.cfg.feature_sigma_px)
        return gradient_feature(candidate.bands.astype(np.float32), candidate.valid, self.cfg.feature_sigma_px)

    def _shifted(
        self,
        ctx: _AOIContext,
        item: _Item,
        grid_name: str,
        bands: list[str],
        feature_bands: list[str],
        band_names: list[str],
    ) -> dict:
        """Estimate the residual shift of an S1 or DSM acquisition against its reference, then warp once.

        `bands` and `feature_bands` are asset keys; `band_names` name the output bands (registry names).
        """
        grid = ctx.grids.get(grid_name)
        sensor = get_sensor(item.sensor)
        rel = f"{item.aoi}/{item.sensor}_{item.date}.tif"
        row = _empty_row(item, item.id, "image", grid_name)
        row["band_names"] = list(band_names)
        truth = ctx.truth.get(item.id)
        if truth is not None:
            row["truth_dx_px"], row["truth_dy_px"] = truth
        reference = ctx.reference(grid_name)
        if grid is None or reference is None:
            ref_sensor = "Sentinel-2" if grid_name == S10 else "RGB"
            row["error"] = f"no accepted {ref_sensor} acquisition in AOI {item.aoi} to register against"
            return row
        missing = [b for b in bands if b not in item.assets]
        if missing:
            row["error"] = f"missing band assets {missing}"
            return row
        paths = [item.assets[b] for b in bands]
        row["reference_id"] = "+".join(ctx.ref_ids[grid_name])
        key = _params_key(self.cfg, grid.to_dict(), _file_stamp(paths), row["reference_id"])
        is_s1 = item.sensor == "s1"
        resampling = Resampling[self.cfg.s1_resampling if is_s1 else self.cfg.fine_resampling]
        nodata = sensor.bands[0].nodata
        dtype = "float32"
        out_nodata = float("nan") if nodata is None else float(nodata)

        pixels: dict[Path, np.ndarray] = {}

        _, match_grid = match_window(grid, self.cfg.match_px)

        def warp(band_paths: list[Path], shift: tuple[float, float], onto: Grid = grid) -> np.ndarray:
            """Warp band files; each is opened and read once for the checks, the estimation and the final warp."""
            for path in band_paths:
                if path not in pixels:
                    pixels[path] = sources[path].read([1])
            return warp_files(
                [sources[p] for p in band_paths],
                [pixels[p] for p in band_paths],
                onto,
                resampling=resampling,
                shift_px=shift,
                dtype=dtype,
                nodata=out_nodata,
            )

        def valid_of(a: np.ndarray) -> np.ndarray:
            return np.isfinite(a) if nodata is None else (a != nodata) & np.isfinite(a)

        with contextlib.ExitStack() as stack:
            sources = {path: stack.enter_context(rasterio.open(path)) for path in paths}
            first = sources[paths[0]]
            if first.crs is None:
                row["error"] = f"{paths[0]}: raster has no CRS"
                return row
            if not intersects(bounds_in(first, grid.crs), grid.bounds):
                row["error"] = f"footprint does not overlap the {grid_name} grid of AOI {item.aoi}"
                return row
            reused = self._reuse(rel, key)
            if reused is not None:
                return reused
            moving = warp([item.assets[b] for b in feature_bands], (0.0, 0.0), match_grid)
            moving_valid = np.all([valid_of(m) for m in moving], axis=0)
            if not moving_valid.any():
                row["error"] = "all nodata on the AOI grid after warping"
                return row
            if is_s1:
                feature = gradient_feature(moving, moving_valid, self.cfg.s1_speckle_sigma_px)
            else:
                feature = dsm_feature(moving, moving_valid, self.cfg.feature_sigma_px, self.cfg.dsm_detrend_sigma_px)
            dx, dy, err = estimate_shift(
                reference,
                feature,
                upsample_factor=self.cfg.upsample_factor,
                normalization=self.cfg.normalization,
                max_shift_px=self.cfg.max_shift_px,
            )
            row.update(shift_dx_px=dx, shift_dy_px=dy, shift_error=err)
            data = warp(paths, (dx, dy))
            valid = np.all([valid_of(b) for b in data], axis=0)
            row["valid_fraction"] = float(valid.mean())
            if not valid.any():
                row["error"] = "all nodata on the AOI grid after correction"
                return row
            return self._write(rel, key, data.astype(np.float32), grid, row, nodata=None if nodata is None else nodata)

    def _rgb(self, ctx: _AOIContext, item: _Item, order: int) -> tuple[dict, _Candidate | None]:
        """RGB on the fine grid; its match window as a reference candidate for the DSM."""
        rel = f"{item.aoi}/rgb_{item.date}.tif"
        row = _empty_row(item, item.id, "image", FINE)
        row["band_names"] = list(get_sensor("rgb").band_names)
        if "image" not in item.assets:
            row["error"] = "missing RGB asset 'image'"
            return row, None
        path = item.assets["image"]
        with rasterio.open(path) as src:
            if src.crs is None:
                row["error"] = f"{path}: raster has no CRS"
                return row, None
            grid = ctx.grids[FINE]  # set by run_aoi from the first RGB with a CRS, so this one has a grid
            key = _params_key(self.cfg, grid.to_dict(), _file_stamp([path]))
            reused = self._reuse(rel, key)
            if reused is not None:
                with rasterio.open(self.out_dir / rel) as out:
                    data = out.read()
            else:
                resampling = Resampling[self.cfg.fine_resampling]
                data = warp_to_grid(src, grid, indexes=[1, 2, 3], resampling=resampling, dtype="uint8", nodata=0)
        valid = np.any(data != 0, axis=0)
        if reused is None:
            row["valid_fraction"] = float(valid.mean())
            if not valid.any():
                row["error"] = "all nodata on the fine grid after warping"
                return row, None
            reused = self._write(rel, key, data, grid, row, nodata=0)
        win, _ = match_window(grid, self.cfg.match_px)
        return reused, _Candidate(item.id, order, "rgb", data[:, win[0], win[1]].copy(), valid[win].copy())

    def _landcover(self, ctx: _AOIContext, item: _Item) -> list[dict]:
        rows = []
        for asset, grid_name, name in (("map", S10, "landcover"), ("map_fine", FINE, "landcover_fine")):
            row = _empty_row(item, f"{name}_{item.aoi}", "landcover", grid_name)
            row["band_names"] = ["landcover"]
            grid = ctx.grids.get(grid_name)
            if asset not in item.assets or grid is None:
                if asset in item.assets:
                    row["error"] = f"no {grid_name} grid in AOI {item.aoi} for the land-cover asset {asset!r}"
                    rows.append(row)
                continue
            rel = f"{item.aoi}/{name}.tif"
            key = _params_key(self.cfg, grid.to_dict(), _file_stamp([item.assets[asset]]))
            reused = self._reuse(rel, key)
            if reused is not None:
                rows.append(reused)
                continue
            with rasterio.open(item.assets[asset]) as src:
                data = warp_to_grid(src, grid, resampling=Resampling.nearest, dtype="uint8", nodata=0)
            row["valid_fraction"] = float((data[0] != 0).mean())
            rows.append(self._write(rel, key, data, grid, row, nodata=0))
        return rows

    # -- AOI -----------------------------------------------------------------------------------

    def _guarded(self, ctx: _AOIContext, item: _Item, fn: Callable, *args: Any) -> tuple[list[dict], Any]:
        """Run one raster's work; a failure becomes a row with its reason. Returns (rows, extra)."""
        try:
            out = fn(ctx, item, *args)
        except (OSError, rasterio.errors.RasterioError, ValueError) as e:
            out = _empty_row(item, item.id, "image", S10 if item.sensor in ("s1", "s2") else FINE)
            out["error"] = f"{type(e).__name__}: {e}"
            log.warning("%s: %s", item.id, out["error"])
        out, extra = out if isinstance(out, tuple) else (out, None)
        rows = out if isinstance(out, list) else [out]
        for r in rows:
            if r["status"] != "ok":
                log.warning("%s: quarantined: %s", r["id"], r["error"])
        return rows, extra

    def run_aoi(self, aoi: str, items: list[_Item], progress: tqdm | None = None) -> list[dict]:
        """Co-register every accepted acquisition of one AOI; failures become rows with a reason.

        Two phases: S2, RGB and land cover (they need only the grids), then S1 and DSM (they need the
        references, built from the clearest S2 and RGB acquisitions of the first phase).
        """
        biome = next((i.biome for i in items if i.biome), "")
        ctx = _AOIContext(self.cfg, self.out_dir, aoi, biome, load_truth(self.truth_dir, aoi))
        by_sensor: dict[str, list[_Item]] = {}
        for item in items:
            by_sensor.setdefault(item.sensor, []).append(item)

        def run_all(groups: dict[str, list[tuple]]) -> dict[str, list[tuple[list[dict], Any]]]:
            """Run each group's tasks (item, method, *args) in order; their results by group."""
            results: dict[str, list] = {name: [] for name in groups}
            for name, tasks in groups.items():
                for task in tasks:
                    results[name].append(self._guarded(ctx, *task))
                    if progress is not None:
                        progress.update(1)
            return results

        s2_items = []
        for item in by_sensor.get("s2", []):
            if S10 not in ctx.grids:
                ref_band = item.assets.get("B02") or item.assets.get("B04")
                if ref_band is None:
                    continue
                with rasterio.open(ref_band) as src:
                    if src.crs is None:
                        continue
                    ctx.grids[S10] = Grid.of(src)
            s2_items.append(item)
        for item in by_sensor.get("rgb", []):
            if S10 not in ctx.grids:
                self._grid_from_any(ctx, item)
            if FINE not in ctx.grids:
                self._fine_grid(ctx, item)
        s1_bands = list(get_sensor("s1").band_names)
        done = run_all(
            {
                "rgb": [(item, self._rgb, i) for i, item in enumerate(by_sensor.get("rgb", []))],
                "landcover": [(item, self._landcover) for item in by_sensor.get("landcover", [])],
                "s2": [(item, self._s2, i) for i, item in enumerate(s2_items)],
            }
        )
        for grid_name, sensor in ((S10, "s2"), (FINE, "rgb")):
            chosen: list[_Candidate] = []
            for _, candidate in done[sensor]:
                chosen = keep_clearest(chosen, candidate, self.cfg.reference_dates)
            if chosen:
                chosen.sort(key=lambda c: c.order)
                ctx.set_reference(grid_name, chosen, [self._reference_feature(c) for c in chosen])
        s1_feature_bands = list(self.cfg.s1_feature_bands)
        done |= run_all(
            {
                "dsm": [(item, self._shifted, FINE, ["dsm"], ["dsm"], ["height"]) for item in by_sensor.get("dsm", [])],
                "s1": [
                    (item, self._shifted, S10, s1_bands, s1_feature_bands, s1_bands) for item in by_sensor.get("s1", [])
                ],
            }
        )
        # the table lists rasters as the sequential stage did: S2, RGB, S1, DSM, land cover
        order = ("s2", "rgb", "s1", "dsm", "landcover")
        rows = [r for sensor in order for item_rows, _ in done[sensor] for r in item_rows]
        atomic_write_json(self.out_dir / aoi / GRIDS_NAME, {name: g.to_dict() for name, g in ctx.grids.items()})
        for sensor, group in by_sensor.items():
            if sensor not in ("s1", "s2", "rgb", "dsm", "landcover"):
                for item in group:
                    row = _empty_row(item, item.id, "image", "")
                    row["error"] = f"unknown sensor {sensor!r}"
                    rows.append(row)
        return rows

    def _fine_grid(self, ctx: _AOIContext, item: _Item) -> None:
        """The fine grid covers the first RGB acquisition with a CRS, at `fine_gsd_m` in the AOI CRS."""
        path = item.assets.get("image")
        if path is None or S10 not in ctx.grids:
            return
        try:
            with rasterio.open(path) as src:
                if src.crs is not None:
                    crs = ctx.grids[S10].crs
                    ctx.grids[FINE] = Grid.covering(crs, bounds_in(src, crs), self.cfg.fine_gsd_m)
        except (OSError, rasterio.errors.RasterioError):
            return  # the acquisition's own task reports it

    def _grid_from_any(self, ctx: _AOIContext, item: _Item) -> None:
        """Without Sentinel-2, the AOI CRS is the UTM zone of the first raster (the fine grid still works)."""
        from msgfm.geo.grids import utm_crs

        path = next(iter(item.assets.values()))
        with rasterio.open(path) as src:
            if src.crs is None:
                return
            left, bottom, right, top = bounds_in(src, "EPSG:4326")
            crs = utm_crs((left + right) / 2, (bottom + top) / 2)
            ctx.grids[S10] = Grid.covering(crs, bounds_in(src, crs), 10.0)


def coregister(
    cfg: CoregisterParams,
    *,
    ledger: Path,
    raw_gate: Path,
    raw_dir: Path,
    out_dir: Path,
    report: Path,
    truth_dir: Path | None = None,
) -> pd.DataFrame:
    """Run the stage: co-register all accepted acquisitions, write rasters.parquet and the report."""
    start = time.perf_counter()
    items = load_accepted_items(Path(ledger), Path(raw_gate), Path(raw_dir))
    if not items:
        raise CoregisterError(f"{raw_gate}: the raw gate accepted no acquisitions; nothing to co-register")
    by_aoi: dict[str, list[_Item]] = {}
    for item in items:
        by_aoi.setdefault(item.aoi, []).append(item)
    worker = Coregistrar(cfg, Path(out_dir), truth_dir)
    rows: list[dict] = []
    # one GDAL environment for the whole run instead of one per open/warp call, and single-threaded BLAS: the
    # phase correlation's small matrix DFTs cost ten times more CPU when OpenBLAS threads contend for 2 cores
    with (
        rasterio.Env(),
        threadpool_limits(1, user_api="blas"),
        tqdm(total=len(items), desc="coregister", unit="raster") as progress,
    ):
        for aoi, group in sorted(by_aoi.items()):
            log.info("AOI %s: %d acquisitions", aoi, len(group))
            rows.extend(worker.run_aoi(aoi, group, progress))
    table = pd.DataFrame(rows, columns=RASTER_COLUMNS)
    table["datetime"] = pd.to_datetime(table["datetime"], utc=True)
    with atomic_path(Path(out_dir) / "rasters.parquet", suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    seconds = time.perf_counter() - start
    atomic_write_json(report, shift_report(table, pixels=worker.pixels, seconds=seconds))
    log.info(
        "coregister: %d rasters ok, %d failed",
        int((table["status"] == "ok").sum()),
        int((table["status"] != "ok").sum()),
    )
    return table


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


# ----------------------------------------------------------------------------------------------
# after the stage: what the coreg gate re-measures


def read_grids(out_dir: Path, aoi: str) -> dict[str, Grid]:
    """The reference grids of an AOI written by the stage ({} when missing)."""
    path = Path(out_dir) / aoi / GRIDS_NAME
    if not path.is_file():
        return {}
    return {name: Grid.from_dict(d) for name, d in json.loads(path.read_text()).items()}


def measure_residuals(table: pd.DataFrame, out_dir: Path, cfg: CoregisterParams) -> dict[str, tuple[float, float]]:
    """Shift left in each corrected S1/DSM output against the reference features rebuilt from the outputs.

    The same estimator as the correction, run on the written files against the same reference acquisitions
    (the raster's `reference_id`): a correct raster measures about (0, 0); a raster whose correction was
    wrong or skipped measures its misregistration.
    """
    out_dir = Path(out_dir)
    ok = table[table["status"] == "ok"]
    residuals: dict[str, tuple[float, float]] = {}
    for _, group in ok.groupby("aoi"):
        features: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # reference id -> (feature, valid)
        ids = set(group["id"])
        shifted = group[group["sensor"].isin(["s1", "dsm"])]
        wanted = {i for ref in shifted["reference_id"] for i in str(ref).split("+") if i}

        def window_of(r) -> tuple[slice, slice]:
            grid = Grid(r.crs, Affine(*list(r.transform)[:6]), int(r.width), int(r.height))
            return match_window(grid, cfg.match_px)[0]

        references = group[group["sensor"].isin(["s2", "rgb"]) & (group["kind"] == "image") & group["id"].isin(wanted)]
        for r in references.itertuples():
            win = window_of(r)
            with rasterio.open(out_dir / r.path) as src:
                data = src.read()[:, win[0], win[1]]
            if r.sensor == "s2":
                valid = np.all(data != 0, axis=0)
                cloud_id = f"{r.id}_cloud"
                if cloud_id in ids:
                    with rasterio.open(out_dir / group.loc[group["id"] == cloud_id, "path"].iloc[0]) as src:
                        valid &= src.read(1)[win] == 0
                idx = [list(r.band_names).index(b) for b in cfg.s2_feature_bands]
                feature = gradient_feature(data[idx].astype(np.float32), valid, cfg.feature_sigma_px)
            else:
                valid = np.any(data != 0, axis=0)
                feature = rgb_feature(data, valid, cfg.feature_sigma_px)
            features[r.id] = (feature, valid)
        for r in shifted.itertuples():
            chosen = [features[i] for i in str(r.reference_id).split("+") if i in features]
            if not chosen:
                continue
            reference = mean_reference([f for f, _ in chosen], [v for _, v in chosen])
            win = window_of(r)
            with rasterio.open(out_dir / r.path) as src:
                data = src.read()[:, win[0], win[1]].astype(np.float32)
                nodata = src.nodata
            valid = np.all(np.isfinite(data), axis=0)
            if nodata is not None and not math.isnan(nodata):
                valid &= np.all(data != nodata, axis=0)
            if r.sensor == "s1":
                idx = [list(r.band_names).index(b) for b in cfg.s1_feature_bands]
                feature = gradient_feature(data[idx], valid, cfg.s1_speckle_sigma_px)
            else:
                feature = dsm_feature(data, valid, cfg.feature_sigma_px, cfg.dsm_detrend_sigma_px)
            dx, dy, _ = estimate_shift(
                reference,
                feature,
                upsample_factor=cfg.upsample_factor,
                normalization=cfg.normalization,
                max_shift_px=cfg.max_shift_px,
            )
            residuals[r.id] = (dx, dy)
    return residuals
