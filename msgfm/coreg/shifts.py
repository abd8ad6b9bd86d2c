"""Shift estimation: the sub-pixel offset of one feature image against another, within a match window.

Shift convention: (dx, dy) in reference-grid pixels is where the sensor's content appears, relative
to where it belongs, when warped by its georeference alone (x to the right, y down); correcting it
moves the content by (-dx, -dy). Phase correlation is scikit-image's, with a fallback peak search
restricted to plausible shifts; shifts are matched in a centred window of the grid so their cost
does not grow with the raster.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from skimage.registration import phase_cross_correlation

from msgfm.geo.grids import Grid

if TYPE_CHECKING:
    from msgfm.config import CoregisterParams


def estimate_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    *,
    upsample_factor: int = 100,
    normalization: str | None = None,
    max_shift_px: float | None = None,
) -> tuple[float, float, float]:
    """Sub-pixel shift (dx, dy) of `moving`'s content relative to `reference`, and the match error.

    scikit-image's phase correlation finds the global correlation peak; a Hann window tapers both
    features so the image borders do not correlate with each other. When that peak lies beyond
    `max_shift_px` (a large structure matched to the wrong copy of itself), the peak is searched again
    only among plausible shifts, then refined to 1/upsample_factor px by an upsampled DFT around it.
    """
    taper = np.outer(np.hanning(reference.shape[0]), np.hanning(reference.shape[1])).astype(np.float32)
    ref, mov = reference * taper, moving * taper
    shift, error, _ = phase_cross_correlation(ref, mov, upsample_factor=upsample_factor, normalization=normalization)
    if max_shift_px is None or math.hypot(shift[0], shift[1]) <= max_shift_px:
        return float(-shift[1]), float(-shift[0]), float(error)
    dy, dx = _windowed_peak(ref, mov, max_shift_px, upsample_factor, normalization)
    norm = math.hypot(dx, dy)
    if norm > max_shift_px:  # the +-1 px refinement around a peak at the radius may step past it: clip
        dx, dy = dx * max_shift_px / norm, dy * max_shift_px / norm
    return float(-dx), float(-dy), float(error)


def shift_confidence(
    cfg: CoregisterParams, reference: np.ndarray, moving: np.ndarray, shift: tuple[float, float]
) -> float:
    """How far the quadrants of the match window agree with `shift`: 1 / (1 + d), two of four within d px.

    The shift of a raster is the same everywhere in it, so a real misregistration is found again in the
    quadrants that have structure (a DSM's flat quadrants may not: two of four must agree). Measured: the
    simulated worlds' S1 and DSM within 0.2 px (confidence >= 0.83); BigEarthNet's co-located S1 patches,
    where speckle is matched against optical edges, 1.3-5.6 px (confidence 0.15-0.43).
    """
    h, w = reference.shape[0] // 2, reference.shape[1] // 2
    apart = []
    for r0 in (0, reference.shape[0] - h):
        for c0 in (0, reference.shape[1] - w):
            win = (slice(r0, r0 + h), slice(c0, c0 + w))
            dx, dy, _ = estimate_shift_with(cfg, reference[win], moving[win])
            apart.append(math.hypot(dx - shift[0], dy - shift[1]))
    return 1.0 / (1.0 + sorted(apart)[1])  # two of the four agree within this: flat quadrants may not


def confident_shift(
    cfg: CoregisterParams, reference: np.ndarray, moving: np.ndarray
) -> tuple[tuple[float, float, float], float, str]:
    """(dx, dy, error) to apply, the estimate's confidence, and why it is not applied ('' when it is).

    Below `coregister.min_shift_confidence` the quadrants of the match window disagree: the estimate is
    noise, the shift applied is (0, 0) and the note gives the estimate that was refused.
    """
    dx, dy, error = estimate_shift_with(cfg, reference, moving)
    confidence = shift_confidence(cfg, reference, moving, (dx, dy))
    if confidence >= cfg.min_shift_confidence:
        return (dx, dy, error), confidence, ""
    note = (
        f"shift estimate ({dx:.2f}, {dy:.2f}) px not applied: confidence {confidence:.2f} (quadrants disagree) "
        f"< coregister.min_shift_confidence {cfg.min_shift_confidence}"
    )
    return (0.0, 0.0, error), confidence, note


def estimate_shift_with(cfg: CoregisterParams, reference: np.ndarray, moving: np.ndarray) -> tuple[float, float, float]:
    """`estimate_shift` with the stage's settings: the correction and the gate's re-measurement use the same."""
    return estimate_shift(
        reference,
        moving,
        upsample_factor=cfg.upsample_factor,
        normalization=cfg.normalization,
        max_shift_px=cfg.max_shift_px,
    )


def _windowed_peak(
    ref: np.ndarray, mov: np.ndarray, max_shift_px: float, upsample_factor: int, normalization: str | None
) -> tuple[float, float]:
    """(dy, dx) of the cross-correlation peak within `max_shift_px`, in scikit-image's sign convention."""
    product = np.fft.fft2(ref) * np.fft.fft2(mov).conj()
    if normalization == "phase":
        product /= np.maximum(np.abs(product), 100 * np.finfo(np.float64).eps)
    corr = np.fft.ifft2(product).real
    rows, cols = corr.shape
    ry = np.fft.fftfreq(rows, 1 / rows)  # signed integer shift of each row index
    rx = np.fft.fftfreq(cols, 1 / cols)
    allowed = np.hypot(ry[:, None], rx[None, :]) <= max_shift_px
    peak = np.unravel_index(np.argmax(np.where(allowed, corr, -np.inf)), corr.shape)
    y0, x0 = ry[peak[0]], rx[peak[1]]
    # upsampled DFT of the cross-power spectrum on a fine grid of +-1 px around the integer peak
    offsets = np.arange(-upsample_factor, upsample_factor + 1) / upsample_factor
    ey = np.exp(2j * np.pi * np.outer(y0 + offsets, np.fft.fftfreq(rows)))
    ex = np.exp(2j * np.pi * np.outer(np.fft.fftfreq(cols), x0 + offsets))
    fine = (ey @ product @ ex).real
    fy, fx = np.unravel_index(np.argmax(fine), fine.shape)
    return float(y0 + offsets[fy]), float(x0 + offsets[fx])


def match_window(grid: Grid, size_px: int) -> tuple[tuple[slice, slice], Grid]:
    """The centred square of side `size_px` (at most the grid) where shifts are matched, and its sub-grid.

    Matching a window rather than the whole grid bounds the cost of features, correlation and the
    estimation warp whatever the raster size; the shift of a raster is the same everywhere in it.
    """
    h, w = min(size_px, grid.height), min(size_px, grid.width)
    r0, c0 = (grid.height - h) // 2, (grid.width - w) // 2
    sub = Grid(grid.crs, grid.transform @ Affine.translation(c0, r0), w, h)
    return (slice(r0, r0 + h), slice(c0, c0 + w)), sub
