"""Per-sensor handling: how each sensor's acquisitions go onto the AOI grids, and which are references.

S2 (all 12 L2A bands, 20 m and 60 m ones resampled, and its cloud mask: msgfm/coreg/clouds.py) and RGB
are warped by their georeference alone and are the references: each offers its match window as a `Candidate`, from which
the stage keeps the clearest dates. S1 and the DSM are shift-corrected: their residual shift against
the reference feature of their grid is estimated, then folded into their single warp. Land cover is
warped onto both grids. Each function takes one acquisition and returns an `Outcome`, its rows of
`rasters.parquet` (a failure is a row with its reason) and, for a reference, its candidate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.io import DatasetReader

from msgfm.coreg.aoi_grids import FINE, S10
from msgfm.coreg.clouds import CLEAR, NODATA, cloud_mask_on_grid, mask_asset
from msgfm.coreg.features import mean_reference, moving_feature, reference_feature
from msgfm.coreg.inputs import Item
from msgfm.coreg.records import RasterStore, empty_row, file_stamp, params_key, raster_name
from msgfm.coreg.shifts import confident_shift, match_window
from msgfm.coreg.warp import warp_files
from msgfm.geo.grids import Grid, bounds_in, intersects, warp_to_grid
from msgfm.sensors import S2_L2A_BANDS, get_sensor

if TYPE_CHECKING:
    from msgfm.config import CoregisterParams


@dataclass
class Candidate:
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


@dataclass
class Outcome:
    """What one acquisition's task produced: its rows of rasters.parquet and, for a reference, its candidate."""

    rows: list[dict]
    candidate: Candidate | None = None


@dataclass
class AOIContext:
    """Grids, reference features and settings shared by the rasters of one AOI."""

    cfg: CoregisterParams
    store: RasterStore
    aoi: str
    biome: str
    truth: dict[str, tuple[float, float]]
    grids: dict[str, Grid]
    references: dict[str, np.ndarray] = field(default_factory=dict)
    ref_ids: dict[str, list[str]] = field(default_factory=lambda: {S10: [], FINE: []})

    def set_reference(self, grid: str, chosen: list[Candidate]) -> None:
        """The reference of a grid (S2 for the 10 m grid, RGB for the fine grid) from the chosen acquisitions."""
        chosen = sorted(chosen, key=lambda c: c.order)
        features = [reference_feature(c.sensor, c.bands, c.valid, self.cfg) for c in chosen]
        self.references[grid] = mean_reference(features, [c.valid for c in chosen])
        self.ref_ids[grid] = [c.raster_id for c in chosen]


def keep_clearest(candidates: list[Candidate], new: Candidate | None, n: int) -> list[Candidate]:
    """The `n` clearest of `candidates` and `new`: a reference built from them skips mostly clouded dates."""
    if new is None:
        return candidates
    return sorted([*candidates, new], key=lambda c: c.rank)[:n]


# -- references: S2 and RGB ---------------------------------------------------------------------


def coregister_s2(ctx: AOIContext, item: Item, order: int) -> Outcome:
    """All 12 bands (and the cloud mask) on the 10 m grid; the feature bands' window as a reference candidate."""
    grid = ctx.grids[S10]
    rel = f"{item.aoi}/{raster_name(item)}.tif"
    cloud_rel = f"{item.aoi}/{raster_name(item)}_cloud.tif"
    row = empty_row(item, item.id, "image", S10)
    row["band_names"] = list(S2_L2A_BANDS)
    missing = [b for b in S2_L2A_BANDS if b not in item.assets]
    if missing:
        row["error"] = f"missing S2 band assets {missing}"
        return Outcome([row])
    paths = [item.assets[b] for b in S2_L2A_BANDS]
    mask_key = mask_asset(item.assets)
    mask_path = item.assets[mask_key] if mask_key else None
    key = params_key(ctx.cfg, grid.to_dict(), file_stamp(paths + ([mask_path] if mask_path else [])))
    reused, cloud_reused = ctx.store.reuse(rel, key), ctx.store.reuse(cloud_rel, key)
    if reused is not None and cloud_reused is not None:
        data, cloud = ctx.store.read(rel), ctx.store.read(cloud_rel)[0]
        rows = [reused, cloud_reused]
    else:
        resampling = Resampling[ctx.cfg.s2_resampling]
        with contextlib.ExitStack() as stack:
            sources = [stack.enter_context(rasterio.open(path)) for path in paths]
            pixels = [src.read([1]) for src in sources]
            data = warp_files(sources, pixels, grid, resampling=resampling, dtype="uint16", nodata=0)
        valid = np.all(data != 0, axis=0)
        row["valid_fraction"] = float(valid.mean())
        if not valid.any():
            row["error"] = "all nodata on the AOI grid after warping"
            return Outcome([row])
        cloud = cloud_mask_on_grid(mask_path, mask_key, grid, data)
        rows = [ctx.store.write(rel, key, data, grid, row, nodata=0), _cloud_row(ctx, item, cloud_rel, key, cloud)]
    valid = np.all(data != 0, axis=0) & (cloud == CLEAR)
    feature_idx = [S2_L2A_BANDS.index(b) for b in ctx.cfg.s2_feature_bands]
    win, _ = match_window(grid, ctx.cfg.match_px)
    # copies of the window only: a candidate must not keep the whole raster alive
    return Outcome(rows, Candidate(item.id, order, "s2", data[feature_idx, win[0], win[1]], valid[win].copy()))


def _cloud_row(ctx: AOIContext, item: Item, rel: str, key: str, cloud: np.ndarray) -> dict:
    """Write an S2 acquisition's (H, W) cloud mask on the 10 m grid (nodata 255) and return its row."""
    row = empty_row(item, f"{item.id}_cloud", "cloud_mask", S10)
    row["band_names"] = ["cloud_mask"]
    row["valid_fraction"] = float((cloud != NODATA).mean())
    return ctx.store.write(rel, key, cloud[None], ctx.grids[S10], row, nodata=NODATA)


def coregister_rgb(ctx: AOIContext, item: Item, order: int) -> Outcome:
    """RGB on the fine grid; its match window as a reference candidate for the DSM."""
    rel = f"{item.aoi}/{raster_name(item)}.tif"
    row = empty_row(item, item.id, "image", FINE)
    row["band_names"] = list(get_sensor("rgb").band_names)
    if "image" not in item.assets:
        row["error"] = "missing RGB asset 'image'"
        return Outcome([row])
    path = item.assets["image"]
    with rasterio.open(path) as src:
        if src.crs is None:
            row["error"] = f"{path}: raster has no CRS"
            return Outcome([row])
        grid = ctx.grids.get(FINE)  # chosen from the first RGB with a CRS overlapping the 10 m grid
        if grid is None:
            row["error"] = f"{path}: footprint does not overlap the s10 grid of AOI {item.aoi}; no fine grid"
            return Outcome([row])
        key = params_key(ctx.cfg, grid.to_dict(), file_stamp([path]))
        reused = ctx.store.reuse(rel, key)
        if reused is not None:
            data = ctx.store.read(rel)
        else:
            resampling = Resampling[ctx.cfg.fine_resampling]
            data = warp_to_grid(src, grid, indexes=[1, 2, 3], resampling=resampling, dtype="uint8", nodata=0)
    valid = np.any(data != 0, axis=0)
    if reused is None:
        row["valid_fraction"] = float(valid.mean())
        if not valid.any():
            row["error"] = "all nodata on the fine grid after warping"
            return Outcome([row])
        reused = ctx.store.write(rel, key, data, grid, row, nodata=0)
    win, _ = match_window(grid, ctx.cfg.match_px)
    return Outcome([reused], Candidate(item.id, order, "rgb", data[:, win[0], win[1]].copy(), valid[win].copy()))


def coregister_landcover(ctx: AOIContext, item: Item) -> Outcome:
    """The land-cover maps on the grid each belongs to (`map` on the 10 m grid, `map_fine` on the fine grid)."""
    rows = []
    for asset, grid_name, name in (("map", S10, "landcover"), ("map_fine", FINE, "landcover_fine")):
        row = empty_row(item, f"{name}_{item.aoi}", "landcover", grid_name)
        row["band_names"] = ["landcover"]
        grid = ctx.grids.get(grid_name)
        if asset not in item.assets or grid is None:
            if asset in item.assets:
                row["error"] = f"no {grid_name} grid in AOI {item.aoi} for the land-cover asset {asset!r}"
                rows.append(row)
            continue
        rel = f"{item.aoi}/{name}.tif"
        key = params_key(ctx.cfg, grid.to_dict(), file_stamp([item.assets[asset]]))
        reused = ctx.store.reuse(rel, key)
        if reused is not None:
            rows.append(reused)
            continue
        with rasterio.open(item.assets[asset]) as src:
            data = warp_to_grid(src, grid, resampling=Resampling.nearest, dtype="uint8", nodata=0)
        row["valid_fraction"] = float((data[0] != 0).mean())
        rows.append(ctx.store.write(rel, key, data, grid, row, nodata=0))
    return Outcome(rows)


# -- shift-corrected: S1 and DSM ----------------------------------------------------------------


@dataclass(frozen=True)
class ShiftedSensor:
    """How a shift-corrected sensor is aligned: its grid, the asset keys warped and matched, the output bands."""

    grid: str
    bands: list[str]
    feature_bands: list[str]
    """Asset keys whose feature is matched against the grid's reference."""
    band_names: list[str]
    """Names of the output bands (registry names)."""


def shifted_sensors(cfg: CoregisterParams) -> dict[str, ShiftedSensor]:
    """S1 against the S2 reference on the 10 m grid, the DSM against the RGB reference on the fine grid."""
    s1_bands = list(get_sensor("s1").band_names)
    return {
        "dsm": ShiftedSensor(FINE, ["dsm"], ["dsm"], ["height"]),
        "s1": ShiftedSensor(S10, s1_bands, list(cfg.s1_feature_bands), s1_bands),
    }


class _Bands:
    """The band files of one acquisition, each read once for the estimation and the final warp."""

    def __init__(self, sources: dict[Path, DatasetReader], resampling: Resampling, nodata: float | None):
        self.sources = sources
        self.pixels: dict[Path, np.ndarray] = {}
        self.resampling = resampling
        self.nodata = nodata

    def warp(self, paths: list[Path], shift: tuple[float, float], onto: Grid) -> np.ndarray:
        """The files warped onto `onto` (float32, nodata as the source's or NaN), moved by -shift."""
        for path in paths:
            if path not in self.pixels:
                self.pixels[path] = self.sources[path].read([1])
        return warp_files(
            [self.sources[p] for p in paths],
            [self.pixels[p] for p in paths],
            onto,
            resampling=self.resampling,
            shift_px=shift,
            dtype="float32",
            nodata=float("nan") if self.nodata is None else float(self.nodata),
        )

    def valid(self, warped: np.ndarray) -> np.ndarray:
        """Pixels valid in every band of `warped` (finite, and not the nodata value)."""
        return np.all([self._valid(b) for b in warped], axis=0)

    def _valid(self, a: np.ndarray) -> np.ndarray:
        return np.isfinite(a) if self.nodata is None else (a != self.nodata) & np.isfinite(a)


def coregister_shifted(ctx: AOIContext, item: Item, spec: ShiftedSensor) -> Outcome:
    """Estimate the residual shift of an S1 or DSM acquisition against its reference, then warp once."""
    grid = ctx.grids.get(spec.grid)
    row = empty_row(item, item.id, "image", spec.grid)
    row["band_names"] = list(spec.band_names)
    truth = ctx.truth.get(item.id)
    if truth is not None:
        row["truth_dx_px"], row["truth_dy_px"] = truth
    if grid is None or spec.grid not in ctx.references:
        ref_sensor = "Sentinel-2" if spec.grid == S10 else "RGB"
        row["error"] = f"no accepted {ref_sensor} acquisition in AOI {item.aoi} to register against"
        return Outcome([row])
    missing = [b for b in spec.bands if b not in item.assets]
    if missing:
        row["error"] = f"missing band assets {missing}"
        return Outcome([row])
    paths = [item.assets[b] for b in spec.bands]
    row["reference_id"] = "+".join(ctx.ref_ids[spec.grid])
    key = params_key(ctx.cfg, grid.to_dict(), file_stamp(paths), row["reference_id"])
    rel = f"{item.aoi}/{raster_name(item)}.tif"
    with contextlib.ExitStack() as stack:
        sources = {path: stack.enter_context(rasterio.open(path)) for path in paths}
        row["error"] = _placement_problem(sources[paths[0]], paths[0], grid, spec.grid, item.aoi)
        if row["error"]:
            return Outcome([row])
        reused = ctx.store.reuse(rel, key)
        if reused is not None:
            return Outcome([reused])
        resampling = Resampling[ctx.cfg.s1_resampling if item.sensor == "s1" else ctx.cfg.fine_resampling]
        bands = _Bands(sources, resampling, get_sensor(item.sensor).bands[0].nodata)
        shift = _estimate(ctx, item, spec, bands)
        if shift is None:
            row["error"] = "all nodata on the AOI grid after warping"
            return Outcome([row])
        (dx, dy, error), confidence, note = shift
        row.update(shift_dx_px=dx, shift_dy_px=dy, shift_error=error, shift_confidence=confidence, shift_note=note)
        data = bands.warp(paths, (dx, dy), grid)
    valid = bands.valid(data)
    row["valid_fraction"] = float(valid.mean())
    if not valid.any():
        row["error"] = "all nodata on the AOI grid after correction"
        return Outcome([row])
    return Outcome([ctx.store.write(rel, key, data.astype(np.float32), grid, row, nodata=bands.nodata)])


def _placement_problem(first: DatasetReader, path: Path, grid: Grid, grid_name: str, aoi: str) -> str:
    """Why an acquisition cannot go onto the AOI grid (no CRS, no overlap), '' when it can."""
    if first.crs is None:
        return f"{path}: raster has no CRS"
    if not intersects(bounds_in(first, grid.crs), grid.bounds):
        return f"footprint does not overlap the {grid_name} grid of AOI {aoi}"
    return ""


def _estimate(
    ctx: AOIContext, item: Item, spec: ShiftedSensor, bands: _Bands
) -> tuple[tuple[float, float, float], float, str] | None:
    """`confident_shift` against the grid's reference in the match window; None if the window is all nodata."""
    _, match_grid = match_window(ctx.grids[spec.grid], ctx.cfg.match_px)
    moving = bands.warp([item.assets[b] for b in spec.feature_bands], (0.0, 0.0), match_grid)
    moving_valid = bands.valid(moving)
    if not moving_valid.any():
        return None
    feature = moving_feature(item.sensor, moving, moving_valid, ctx.cfg)
    return confident_shift(ctx.cfg, ctx.references[spec.grid], feature)
