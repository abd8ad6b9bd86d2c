"""After the stage, what the coreg gate re-measures: the shift left in each corrected S1 and DSM output.

The features and the match window are the correction's own (msgfm.coreg.features, msgfm.coreg.shifts),
rebuilt from the written files; the measure is not its estimator. The correction finds the peak of a
Hann-tapered FFT cross-correlation of the whole window (scikit-image's phase_cross_correlation) and trusts
it when the window's quadrants agree; re-running that on its own output re-finds whatever peak it chose
(on BigEarthNet's co-located patches a noise peak of several pixels). The gate instead computes the
zero-normalised cross-correlation (ZNCC) of the two gradient-magnitude features directly in the image,
for every integer shift within `coregister.max_shift_px` + 1 px, each normalised over the pixels valid in
both (no taper, no spectrum), takes the sub-pixel peak by a parabola through its neighbours, and calls the
residual measurable only when the features match there: the peak correlation must reach
`gates.min_residual_zncc`. (How far the peak stands above its surroundings does not separate the cases:
smoothed gradients of one real texture correlate at 0.65-0.8 of the peak 2 px away.) Measured (n: rasters):
the simulated S1 outputs peak at 0.62-0.63 (n = 3) with residuals below 0.02 px, and a deliberate 2 px error
measures 1.98-2.02 px; BigEarthNet's co-located S1 against S2 (n = 4) peak at 0.15-0.28 and the SEN12MS-CR
triplet (n = 1, 256 px) at 0.30: not measurable, and said so. The simulated 100 px DSM against RGB chromaticity
peaks at 0.43 (n = 1, residual 0.09 px): measured, close to the threshold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rasterio
from affine import Affine

from msgfm.coreg.features import mean_reference, moving_feature, reference_feature
from msgfm.coreg.shifts import match_window
from msgfm.geo.grids import Grid

if TYPE_CHECKING:
    from msgfm.config import CoregisterParams

Residual = tuple[float, float, float]
"""(dx, dy, peak ZNCC) of a ZNCC surface's maximum."""

Measured = tuple[float, float, float, int, int]
"""(dx, dy, peak ZNCC, window width px, height px) of one raster; dx, dy NaN: not measurable (peak below
`min_zncc`, or peak NaN: the window is too small for the shift radius), so the note can say why."""

Feature = tuple[np.ndarray, np.ndarray]
"""A reference acquisition's (feature, valid) in the match window."""


def measure_residuals(
    table: pd.DataFrame, out_dir: Path, cfg: CoregisterParams, min_zncc: float
) -> dict[str, Measured]:
    """Shift left in each corrected S1/DSM output against the reference features rebuilt from the outputs.

    ZNCC (see the module docstring) of the written file against the same reference acquisitions (the
    raster's `reference_id`): a correct raster measures about (0, 0); a raster whose correction was wrong
    or skipped measures its misregistration; dx, dy NaN where the peak correlation is below `min_zncc`.
    """
    out_dir = Path(out_dir)
    ok = table[table["status"] == "ok"]
    residuals: dict[str, Measured] = {}
    for _, group in ok.groupby("aoi"):
        shifted = group[group["sensor"].isin(["s1", "dsm"])]
        features = _reference_features(group, shifted, out_dir, cfg)
        for r in shifted.itertuples():
            chosen = [features[i] for i in str(r.reference_id).split("+") if i in features]
            if chosen:
                reference = mean_reference([f for f, _ in chosen], [v for _, v in chosen])
                residuals[r.id] = _residual(r, reference, out_dir, cfg, min_zncc)
    return residuals


def _window(r: Any, match_px: int) -> tuple[slice, slice]:
    """The match window of a rasters.parquet row's grid."""
    grid = Grid(r.crs, Affine(*list(r.transform)[:6]), int(r.width), int(r.height))
    return match_window(grid, match_px)[0]


def _reference_features(
    group: pd.DataFrame, shifted: pd.DataFrame, out_dir: Path, cfg: CoregisterParams
) -> dict[str, Feature]:
    """(feature, valid) of every S2 and RGB output of one AOI that a shifted raster names as its reference."""
    ids = set(group["id"])
    wanted = {i for ref in shifted["reference_id"] for i in str(ref).split("+") if i}
    references = group[group["sensor"].isin(["s2", "rgb"]) & (group["kind"] == "image") & group["id"].isin(wanted)]
    features: dict[str, Feature] = {}
    for r in references.itertuples():
        win = _window(r, cfg.match_px)
        with rasterio.open(out_dir / r.path) as src:
            data = src.read()[:, win[0], win[1]]
        if r.sensor == "s2":
            valid = np.all(data != 0, axis=0)
            cloud_id = f"{r.id}_cloud"
            if cloud_id in ids:
                with rasterio.open(out_dir / group.loc[group["id"] == cloud_id, "path"].iloc[0]) as src:
                    valid &= src.read(1)[win] == 0
            data = data[[list(r.band_names).index(b) for b in cfg.s2_feature_bands]]
        else:
            valid = np.any(data != 0, axis=0)
        features[r.id] = (reference_feature(r.sensor, data, valid, cfg), valid)
    return features


def _residual(r: Any, reference: np.ndarray, out_dir: Path, cfg: CoregisterParams, min_zncc: float) -> Measured:
    """ZNCC residual of a written S1/DSM raster (a rasters.parquet row), with its window; NaN dx, dy: not measurable."""
    win = _window(r, cfg.match_px)
    with rasterio.open(out_dir / r.path) as src:
        data = src.read()[:, win[0], win[1]].astype(np.float32)
        nodata = src.nodata
    valid = np.all(np.isfinite(data), axis=0)
    if nodata is not None and not math.isnan(nodata):
        valid &= np.all(data != nodata, axis=0)
    if r.sensor == "s1":
        data = data[[list(r.band_names).index(b) for b in cfg.s1_feature_bands]]
    feature = moving_feature(r.sensor, data, valid, cfg)
    found = zncc_shift(reference, feature, int(math.ceil(cfg.max_shift_px)) + 1)
    height, width = feature.shape
    if found is None:
        return math.nan, math.nan, math.nan, width, height
    dx, dy, peak = found
    return (dx, dy, peak, width, height) if peak >= min_zncc else (math.nan, math.nan, peak, width, height)


def zncc_surface(reference: np.ndarray, moving: np.ndarray, radius: int) -> np.ndarray:
    """ZNCC of reference[y, x] with moving[y + dy, x + dx] for |dx|, |dy| <= radius (rows dy, columns dx).

    Each shift is normalised over the pixels where both features are non-zero (the features are zero off
    their valid pixels); NaN where fewer than 64 pixels overlap.
    """
    h, w = reference.shape
    a = reference[radius : h - radius, radius : w - radius]
    surface = np.full((2 * radius + 1, 2 * radius + 1), np.nan)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            b = moving[radius + dy : h - radius + dy, radius + dx : w - radius + dx]
            both = (a != 0) & (b != 0)
            if both.sum() < 64:
                continue
            x, y = a[both] - a[both].mean(), b[both] - b[both].mean()
            surface[dy + radius, dx + radius] = float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum() + 1e-12))
    return surface


def zncc_shift(reference: np.ndarray, moving: np.ndarray, radius: int) -> Residual | None:
    """(dx, dy, peak correlation) of the ZNCC surface's maximum, sub-pixel by a parabola per axis; None without one."""
    surface = zncc_surface(reference, moving, radius)
    if reference.shape[0] <= 2 * radius or reference.shape[1] <= 2 * radius or not np.isfinite(surface).any():
        return None
    iy, ix = np.unravel_index(np.nanargmax(surface), surface.shape)
    fy = _vertex(surface[iy - 1 : iy + 2, ix]) if 0 < iy < 2 * radius else 0.0
    fx = _vertex(surface[iy, ix - 1 : ix + 2]) if 0 < ix < 2 * radius else 0.0
    return float(ix - radius + fx), float(iy - radius + fy), float(surface[iy, ix])


def _vertex(three: np.ndarray) -> float:
    """Offset (-0.5..0.5) of the vertex of the parabola through three samples around their maximum."""
    before, centre, after = (float(v) for v in three)
    curvature = before - 2 * centre + after
    if not all(math.isfinite(v) for v in (before, centre, after)) or curvature >= 0:
        return 0.0
    return max(-0.5, min(0.5, 0.5 * (before - after) / curvature))
