"""After the stage, what the coreg gate re-measures: the shift left in each corrected S1 and DSM output.

The features, match window and estimator are the correction's own (msgfm.coreg.features,
msgfm.coreg.shifts), applied to the written files rather than to the inputs.
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
from msgfm.coreg.shifts import estimate_shift_with, match_window, shift_confidence
from msgfm.geo.grids import Grid

if TYPE_CHECKING:
    from msgfm.config import CoregisterParams

Feature = tuple[np.ndarray, np.ndarray]
"""A reference acquisition's (feature, valid) in the match window."""


def measure_residuals(
    table: pd.DataFrame, out_dir: Path, cfg: CoregisterParams
) -> dict[str, tuple[float, float] | None]:
    """Shift (dx, dy) left in each corrected S1/DSM output against the reference features rebuilt from the outputs.

    The same estimator as the correction, run on the written files against the same reference acquisitions
    (the raster's `reference_id`): a correct raster measures about (0, 0); a raster whose correction was
    wrong or skipped measures its misregistration.
    """
    out_dir = Path(out_dir)
    ok = table[table["status"] == "ok"]
    residuals: dict[str, tuple[float, float] | None] = {}
    for _, group in ok.groupby("aoi"):
        shifted = group[group["sensor"].isin(["s1", "dsm"])]
        features = _reference_features(group, shifted, out_dir, cfg)
        for r in shifted.itertuples():
            chosen = [features[i] for i in str(r.reference_id).split("+") if i in features]
            if chosen:
                reference = mean_reference([f for f, _ in chosen], [v for _, v in chosen])
                residuals[r.id] = _residual(r, reference, out_dir, cfg)
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


def _residual(r: Any, reference: np.ndarray, out_dir: Path, cfg: CoregisterParams) -> tuple[float, float] | None:
    """Shift (dx, dy) of one written S1/DSM raster (a rasters.parquet row) against its rebuilt reference.

    None when its confidence is below `coregister.min_shift_confidence`: then nothing can be measured.
    """
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
    dx, dy, _ = estimate_shift_with(cfg, reference, feature)
    if shift_confidence(cfg, reference, feature, (dx, dy)) < cfg.min_shift_confidence:
        return None  # the quadrants disagree: the residual cannot be measured (the gate says so)
    return dx, dy
