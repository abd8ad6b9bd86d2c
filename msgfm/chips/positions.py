"""Chip positions: where chips are cut on each AOI grid, their footprints and the land-cover classes they hold.

Chips are `pair.chip_px` pixels on every grid (640 m on the 10 m grid, 64 m on a 1 m fine grid),
stepped by `pair.stride_px` from the grid's top-left pixel. A position is the same place on every
acquisition of that AOI and grid, so chips of any sensor or date at one position share its label chip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from msgfm.geo.grids import Bounds, Grid

GridKey = tuple[str, str]
"""An AOI grid: (aoi, grid name), grid "s10" or "fine"."""

Position = tuple[str, str, int, int]
"""A chip position: (aoi, grid, row, col)."""


def chip_positions(grids: dict[GridKey, Grid], size: int, stride: int) -> dict[GridKey, list[tuple[int, int]]]:
    """Top-left (row, col) of every whole `size` x `size` chip stepped by `stride`, per AOI grid in sorted order."""
    return {
        key: [(r, c) for r in range(0, grid.height - size + 1, stride) for c in range(0, grid.width - size + 1, stride)]
        for key, grid in sorted(grids.items())
    }


def chip_footprints(
    grids: dict[GridKey, Grid], positions: dict[GridKey, list[tuple[int, int]]], size: int
) -> tuple[dict[Position, Bounds], dict[str, tuple[float, float]]]:
    """Bounds of every chip position, and per AOI the origin its split blocks are anchored at (the S2 grid corner)."""
    origins = {}
    footprints: dict[Position, Bounds] = {}
    for (aoi, grid_name), pos in positions.items():
        anchor = grids.get((aoi, "s10")) or grids[(aoi, "fine")]
        origins[aoi] = (anchor.bounds[0], anchor.bounds[1])
        for r, c in pos:
            footprints[(aoi, grid_name, r, c)] = grids[(aoi, grid_name)].window_bounds(r, c, size)
    return footprints, origins


def chip_classes(chip: np.ndarray, min_fraction: float) -> list[int]:
    """The chip's multi-label classes: those covering at least `min_fraction` of its known (non-0) pixels,
    as BigEarthNet labels by area rather than by any pixel (which saturates on large chips)."""
    codes, counts = np.unique(chip[chip != 0], return_counts=True)
    if not counts.size:
        return []
    return sorted(int(v) for v, n in zip(codes, counts, strict=True) if n >= min_fraction * counts.sum())


def position_classes(
    labels: dict[GridKey, Path], positions: dict[GridKey, list[tuple[int, int]]], size: int, min_fraction: float
) -> dict[Position, set[int]]:
    """Land-cover classes (`chip_classes`) of each chip position of the grids that have a label raster."""
    classes: dict[Position, set[int]] = {}
    for (aoi, grid_name), path in labels.items():
        with rasterio.open(path) as src:
            lab = src.read(1)
        for r, c in positions.get((aoi, grid_name), []):
            classes[(aoi, grid_name, r, c)] = set(chip_classes(lab[r : r + size, c : c + size], min_fraction))
    return classes


def window_sum(a: np.ndarray, positions: list[tuple[int, int]], size: int) -> np.ndarray:
    """Sum of `a` over size x size windows at (row, col) positions, via an integral image."""
    ii = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    ii[1:, 1:] = np.cumsum(np.cumsum(a, axis=0), axis=1)
    r = np.array([p[0] for p in positions])
    c = np.array([p[1] for p in positions])
    return ii[r + size, c + size] - ii[r, c + size] - ii[r + size, c] + ii[r, c]
