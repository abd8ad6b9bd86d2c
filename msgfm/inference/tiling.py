"""Window geometry and stitching of tiled inference: overlapping model-sized windows, each keeping its centre.

The model sees one window of `window_px` pixels (its chip size) at a time and returns a grid of cells of
`stride_px` pixels. Windows overlap by half: along each axis they start every `step` pixels, and each one
contributes only its **central half**, the pixels [window/4, 3*window/4). An output cell is the mean of the
window cells covering it, weighted by how much of each cell lies in its window's central half:

- stride <= window/4 (pixel outputs, encoder stages 0..n-3): the central halves tile the raster exactly,
  so every cell comes from exactly one window, at least window/4 pixels from that window's edges (a pure
  centre crop: weights are exactly 1, values are copied unchanged);
- stride = window/2 (a window holds 2x2 cells, e.g. the last stage of msgfm_tiny): no cell lies inside a
  central half, so each cell is the mean of the 2 (x 2) windows whose centre half covers half of it;
- stride = window (one cell per window): one window per cell, the old non-overlapping chips.

Windows are placed on a lattice tied to the raster's origin, never to its size or to the batch, so the same
input always gives the same windows and the same bytes. Windows reaching past the raster's edges are padded
by the reader (with the band mean). Rows are finished in order: `Stitcher` keeps only the output rows the
next window row can still touch, so memory stays bounded by one strip of windows whatever the raster's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisPlan:
    """Windows along one axis: their pixel origins, the weight of each window cell, the output length in cells."""

    window_px: int
    stride_px: int
    origins: tuple[int, ...]
    weights: np.ndarray  # (window_px // stride_px,) float32 weight of each cell of a window
    out_cells: int

    @property
    def cells(self) -> int:
        """Cells per window along this axis."""
        return self.window_px // self.stride_px

    @property
    def weighted(self) -> tuple[int, int]:
        """[first, last + 1) of a window's cells with a positive weight."""
        nonzero = np.flatnonzero(self.weights > 0)
        return int(nonzero[0]), int(nonzero[-1]) + 1

    def span_px(self) -> tuple[int, int]:
        """(first pixel, pixels) that the windows of this axis read, padding included."""
        return self.origins[0], self.origins[-1] + self.window_px - self.origins[0]


def axis_plan(extent_px: int, window_px: int, stride_px: int) -> AxisPlan:
    """The windows covering `extent_px` pixels with half-overlap and centre-half weights (module docstring)."""
    if extent_px < 1:
        raise ValueError(f"cannot tile an axis of {extent_px} px")
    if stride_px < 1 or window_px % stride_px or window_px % 4:
        raise ValueError(f"window {window_px} px must be a multiple of 4 and of the stride {stride_px} px")
    centre_lo, centre_hi = window_px // 4, 3 * window_px // 4
    step = max(stride_px, window_px // 2)
    offset = (centre_lo // stride_px) * stride_px
    n = window_px // stride_px
    starts = np.arange(n) * stride_px
    overlap = np.minimum(centre_hi, starts + stride_px) - np.maximum(centre_lo, starts)
    weights = (np.clip(overlap, 0, None) / stride_px).astype(np.float32)
    out_cells = math.ceil(extent_px / stride_px)
    weighted = np.flatnonzero(weights > 0)
    origins = []
    for k in range(-(window_px // step) - 1, math.ceil(extent_px / step) + 2):
        first = (k * step - offset) // stride_px
        cells = first + weighted
        if ((cells >= 0) & (cells < out_cells)).any():
            origins.append(k * step - offset)
    return AxisPlan(window_px, stride_px, tuple(origins), weights, out_cells)


def window_count(plan_y: AxisPlan, plan_x: AxisPlan) -> int:
    """Windows the model runs on for a raster."""
    return len(plan_y.origins) * len(plan_x.origins)


class Stitcher:
    """Weighted sum of window outputs over a strip of output rows; yields rows once no later window touches them."""

    def __init__(self, plan_y: AxisPlan, plan_x: AxisPlan, channels: int) -> None:
        self.py, self.px, self.channels = plan_y, plan_x, channels
        self.acc = np.zeros((channels, plan_y.cells, plan_x.out_cells), dtype=np.float32)
        self.weight = np.zeros((plan_y.cells, plan_x.out_cells), dtype=np.float32)
        self.next_row = 0  # first output row not yet yielded, held at buffer row 0

    def _add_window(self, cells: np.ndarray, row0: int, col0: int) -> None:
        """Add one window's (C, n, n) cells whose top-left cell is output (row0, col0)."""
        (fy, ly), (fx, lx) = self.py.weighted, self.px.weighted
        y0, y1 = max(fy, -row0), min(ly, self.py.out_cells - row0)
        x0, x1 = max(fx, -col0), min(lx, self.px.out_cells - col0)
        if y0 >= y1 or x0 >= x1:
            return
        w = self.py.weights[y0:y1, None] * self.px.weights[None, x0:x1]
        b = row0 + y0 - self.next_row
        self.acc[:, b : b + y1 - y0, col0 + x0 : col0 + x1] += cells[:, y0:y1, x0:x1] * w
        self.weight[b : b + y1 - y0, col0 + x0 : col0 + x1] += w

    def add_row(self, k: int, windows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Add window row `k` ((n_windows_x, C, n, n)); yield (first output row, (C, rows, width)) blocks now final."""
        stride = self.py.stride_px
        row0 = self.py.origins[k] // stride
        for j, cells in enumerate(windows):
            self._add_window(cells, row0, self.px.origins[j] // stride)
        last = k == len(self.py.origins) - 1
        final = self.py.out_cells if last else self.py.origins[k + 1] // stride + self.py.weighted[0]
        yield from self._flush(min(final, self.py.out_cells))

    def _flush(self, upto: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield output rows [next_row, upto) and move the buffer up so `upto` sits at buffer row 0."""
        hi = upto - self.next_row
        if hi <= 0:
            return
        weight = self.weight[:hi]
        if (weight <= 0).any():
            raise AssertionError("a stitched cell has no window: the tiling plan does not cover the raster")
        yield self.next_row, self.acc[:, :hi] / weight
        self.acc = np.concatenate([self.acc[:, hi:], np.zeros_like(self.acc[:, :hi])], axis=1)
        self.weight = np.concatenate([self.weight[hi:], np.zeros_like(self.weight[:hi])], axis=0)
        self.next_row = upto
