"""Raster I/O of the stage: band files warped onto an AOI grid, and the tiled GeoTIFFs it writes.

Each raster is warped once with rasterio (the shift correction is folded into the destination
transform by `warp_to_grid`); the bands of one acquisition that share a georeference go through
GDAL together. Outputs are plain tiled GeoTIFFs, not COGs: an intermediate the pair stage reads whole.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.io import DatasetReader

from msgfm.geo.grids import Grid, warp_to_grid
from msgfm.geo.io import atomic_path


def warp_files(sources: list[DatasetReader], pixels: list[np.ndarray], grid: Grid, **warp: Any) -> np.ndarray:
    """Warp single-band files onto `grid` (N, H, W); the files sharing a georeference go in one warp call.

    The bands of one acquisition at one resolution (S2's six 20 m bands, S1's VV and VH) share their
    georeference, so GDAL computes their pixel mapping once; the pixels equal those of one warp per file.
    `pixels` are the files' bands already read, (1, h, w) each; `warp` are `warp_to_grid`'s options.
    """
    groups: dict[tuple, list[int]] = {}
    for i, src in enumerate(sources):
        nodata = None if src.nodata is None else ("nan" if math.isnan(src.nodata) else src.nodata)
        key = (src.crs, tuple(src.transform)[:6], src.width, src.height, src.dtypes[0], nodata)
        groups.setdefault(key, []).append(i)
    out: list[np.ndarray | None] = [None] * len(sources)
    for members in groups.values():
        stacked = np.concatenate([pixels[i] for i in members])
        for i, band in zip(members, warp_to_grid(sources[members[0]], grid, source=stacked, **warp), strict=True):
            out[i] = band
    return np.stack(out)


def write_tiled_tiff(
    path: Path, array: np.ndarray, grid: Grid, *, nodata: float | None, band_names: list[str], compress: str
) -> None:
    """Write (C, H, W) on `grid` as a tiled GeoTIFF, atomically.

    An intermediate for the pair stage, read whole: a plain tiled GeoTIFF written in one pass, without
    the COG's in-memory copy and overviews (which cost more than the warp itself on large grids).
    """
    profile = {
        "driver": "GTiff", "count": array.shape[0], "height": grid.height, "width": grid.width,
        "dtype": array.dtype.name, "crs": grid.crs, "transform": grid.transform, "nodata": nodata,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "interleave": "band",
    }  # fmt: skip
    if compress != "none":
        profile.update(compress=compress, predictor=2 if array.dtype.kind in "iu" else 3)
    with atomic_path(path, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(array)
        dst.descriptions = tuple(band_names)
