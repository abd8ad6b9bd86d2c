"""Features two sensors of a scene share, for matching: gradient magnitudes of standardised bands.

Raw intensities differ between sensors (S2 reflectance vs S1 backscatter, RGB colour vs DSM height),
their edges do not: S2 optical bands and despeckled S1, RGB chromaticity (which cast shadows barely
change) and the detrended DSM (buildings and crowns rather than terrain). `reference_feature` and
`moving_feature` hold the stage's choice per sensor, so the correction and the coreg gate's
re-measurement build the same features; `mean_reference` averages a reference over several dates.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from msgfm.config import CoregisterParams


def gradient_feature(bands: np.ndarray, valid: np.ndarray, sigma_px: float) -> np.ndarray:
    """Sum of the per-band standardised gradient magnitudes after Gaussian smoothing, zero off `valid`.

    Gradients (edges) are what two sensors of the same scene share even when their intensities
    are unrelated (reflectance vs backscatter, colour vs height). Invalid pixels and a margin
    around them are zeroed so nodata borders and clouds add no edges of their own.
    """
    bands = np.asarray(bands, dtype=np.float32)
    if bands.ndim == 2:
        bands = bands[None]
    valid = valid & np.all(np.isfinite(bands), axis=0)
    feature = np.zeros(bands.shape[1:], dtype=np.float32)
    if valid.sum() < 16:
        return feature
    for band in bands:
        values = band[valid]
        filled = np.where(valid, (band - values.mean()) / (values.std() + 1e-6), 0.0).astype(np.float32)
        if sigma_px > 0:  # derivative-of-Gaussian filters: smoothing and gradient in one separable pass per axis
            magnitude = ndimage.gaussian_gradient_magnitude(filled, sigma_px)
        else:
            magnitude = np.hypot(ndimage.sobel(filled, axis=0), ndimage.sobel(filled, axis=1))
        feature += magnitude / (magnitude[valid].mean() + 1e-6)
    margin = int(math.ceil(2 * sigma_px)) + 1
    inner = ndimage.binary_erosion(valid, iterations=margin, border_value=1)
    if inner.sum() >= 16:
        feature -= feature[inner].mean()
    feature[~inner] = 0.0
    return feature


def rgb_feature(rgb: np.ndarray, valid: np.ndarray, sigma_px: float) -> np.ndarray:
    """Edges of the RGB chromaticity (r, g): material boundaries, nearly blind to shadows and shading."""
    rgb = rgb.astype(np.float32)
    total = rgb.sum(axis=0) + 1.0
    return gradient_feature(np.stack([rgb[0] / total, rgb[1] / total]), valid, sigma_px)


def dsm_feature(height: np.ndarray, valid: np.ndarray, sigma_px: float, detrend_sigma_px: float) -> np.ndarray:
    """Edges of the DSM after removing the terrain (a wide Gaussian): building and crown outlines."""
    height = np.asarray(height, dtype=np.float32).reshape(height.shape[-2:])
    if not valid.any():
        return np.zeros(height.shape, np.float32)
    filled = np.where(valid, height, np.median(height[valid]))
    objects = filled - ndimage.gaussian_filter(filled, detrend_sigma_px) if detrend_sigma_px > 0 else filled
    return gradient_feature(objects, valid, sigma_px)


def reference_feature(sensor: str, bands: np.ndarray, valid: np.ndarray, cfg: CoregisterParams) -> np.ndarray:
    """Feature of a reference acquisition: RGB chromaticity edges, or the edges of S2's feature bands."""
    if sensor == "rgb":
        return rgb_feature(bands, valid, cfg.feature_sigma_px)
    return gradient_feature(bands.astype(np.float32), valid, cfg.feature_sigma_px)


def moving_feature(sensor: str, bands: np.ndarray, valid: np.ndarray, cfg: CoregisterParams) -> np.ndarray:
    """Feature of a shift-corrected acquisition: despeckled S1 edges, or the detrended DSM's edges."""
    if sensor == "s1":
        return gradient_feature(bands, valid, cfg.s1_speckle_sigma_px)
    return dsm_feature(bands, valid, cfg.feature_sigma_px, cfg.dsm_detrend_sigma_px)


def mean_reference(features: list[np.ndarray], valids: list[np.ndarray]) -> np.ndarray:
    """Mean of reference features over the acquisitions where each pixel was valid (0 where none was)."""
    total = np.zeros_like(features[0])
    count = np.zeros(features[0].shape, dtype=np.float32)
    for feature, valid in zip(features, valids, strict=True):
        total += np.where(valid, feature, 0)
        count += valid
    return np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)
