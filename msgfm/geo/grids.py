"""Pixel grids and one-warp reprojection onto them.

A `Grid` is a CRS, an affine transform and a shape: the frame every co-registered raster of an AOI
shares (the Sentinel-2 10 m grid, or the fine grid of RGB and DSM in the same CRS). `warp_to_grid`
reprojects a raster onto a grid with rasterio in a single warp and can fold a sub-pixel
misregistration into the destination transform, so a corrected raster is resampled only once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.warp import reproject, transform_bounds

Bounds = tuple[float, float, float, float]


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS (as a user string such as "EPSG:32632"), transform and shape."""

    crs: str
    transform: Affine
    width: int
    height: int

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, both positive."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def bounds(self) -> Bounds:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.transform.c, self.transform.f
        return left, top + self.transform.e * self.height, left + self.transform.a * self.width, top

    def window_bounds(self, row: int, col: int, size: int) -> Bounds:
        """Bounds of the `size` x `size` pixel window whose top-left pixel is (row, col)."""
        left, top = self.transform @ (col, row)
        right, bottom = self.transform @ (col + size, row + size)
        return min(left, right), min(top, bottom), max(left, right), max(top, bottom)

    def shifted(self, dx_px: float, dy_px: float) -> Affine:
        """Transform whose pixel (c, r) samples where this grid's pixel (c + dx, r + dy) lies."""
        return self.transform @ Affine.translation(dx_px, dy_px)

    def matches(self, crs: str | CRS, transform: Affine | tuple, width: int, height: int, tol: float = 1e-6) -> bool:
        """True when another raster lies exactly on this grid (same CRS, transform within `tol` px, shape)."""
        other = Affine(*tuple(transform)[:6])
        if (width, height) != (self.width, self.height) or CRS.from_user_input(crs) != CRS.from_user_input(self.crs):
            return False
        res = min(self.res)
        return all(abs(a - b) <= tol * res for a, b in zip(tuple(other)[:6], tuple(self.transform)[:6], strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {"crs": self.crs, "transform": list(self.transform)[:6], "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        return cls(d["crs"], Affine(*d["transform"][:6]), int(d["width"]), int(d["height"]))

    @classmethod
    def of(cls, src: DatasetReader) -> Grid:
        """The grid of an open raster."""
        if src.crs is None:
            raise ValueError(f"{src.name}: raster has no CRS")
        return cls(crs_string(src.crs), src.transform, src.width, src.height)

    @classmethod
    def covering(cls, crs: str, bounds: Bounds, res: float) -> Grid:
        """North-up grid of pixel size `res` snapped to multiples of `res`, covering `bounds`."""
        left, bottom, right, top = bounds
        left = math.floor(left / res + 1e-9) * res
        top = math.ceil(top / res - 1e-9) * res
        width = max(1, math.ceil((right - left) / res - 1e-9))
        height = max(1, math.ceil((top - bottom) / res - 1e-9))
        return cls(crs, Affine(res, 0.0, left, 0.0, -res, top), width, height)


def crs_string(crs: CRS | str) -> str:
    """Short user string of a CRS ("EPSG:32632" when it has an EPSG code, WKT otherwise)."""
    crs = CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def utm_crs(lon: float, lat: float) -> str:
    """The WGS84 UTM zone CRS containing (lon, lat), e.g. "EPSG:32632"."""
    zone = int((lon + 180) // 6) % 60 + 1
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def bounds_in(src: DatasetReader, crs: str) -> Bounds:
    """Bounds of an open raster expressed in `crs` (densified, so curved edges are covered)."""
    return transform_bounds(src.crs, crs, *src.bounds, densify_pts=21)


def intersects(a: Bounds, b: Bounds) -> bool:
    """True when two (left, bottom, right, top) boxes overlap with positive area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def default_nodata(dtype: str) -> float:
    """Destination nodata for a dtype: NaN for floats, 0 for integers."""
    return float("nan") if np.issubdtype(np.dtype(dtype), np.floating) else 0


def has_nodata(pixels: np.ndarray, nodata: float | None) -> bool:
    """True when some pixel equals `nodata` (is NaN for a NaN nodata)."""
    if nodata is None:
        return False
    return bool(np.isnan(pixels).any()) if math.isnan(nodata) else bool((pixels == nodata).any())


def warp_to_grid(
    src: DatasetReader,
    grid: Grid,
    *,
    indexes: list[int] | None = None,
    resampling: Resampling = Resampling.bilinear,
    shift_px: tuple[float, float] = (0.0, 0.0),
    dtype: str | None = None,
    nodata: float | None = None,
    source: np.ndarray | None = None,
) -> np.ndarray:
    """Reproject bands of `src` onto `grid` in one warp; returns (C, H, W).

    `shift_px` = (dx, dy) is the source's misregistration in grid pixels (its content appears at
    (c + dx, r + dy) when warped by georeference alone); it is folded into the destination
    transform so the output pixel (c, r) holds the content that belongs there.
    Pixels outside the source or at its nodata get `nodata` (NaN for floats, 0 for integers).
    `source`, bands already read on `src`'s grid (C, H, W), saves reading them again when a raster is warped
    twice, and warps the bands of several files that share `src`'s georeference in one call (GDAL then
    computes the pixel mapping once for all of them; each band comes out as if warped alone).
    """
    indexes = indexes or list(range(1, src.count + 1))
    dtype = dtype or src.dtypes[indexes[0] - 1]
    count = len(indexes) if source is None else source.shape[0]
    nodata = default_nodata(dtype) if nodata is None else nodata
    dst_transform = grid.shifted(*shift_px)
    if shift_px == (0.0, 0.0) and grid.matches(crs_string(src.crs), src.transform, src.width, src.height):
        source = src.read(indexes) if source is None else source
        data = source.astype(dtype, copy=False)
        if src.nodata is not None and not math.isnan(src.nodata) and src.nodata != nodata:
            data = np.where(source == src.nodata, np.array(nodata, dtype=dtype), data)
        return data
    source = src.read(indexes) if source is None else source
    out = np.full((count, grid.height, grid.width), nodata, dtype=dtype)
    # a nodata value no pixel has changes nothing but makes GDAL build validity masks and take its general
    # kernels, which cost about 3x the unmasked ones
    src_nodata = src.nodata if has_nodata(source, src.nodata) else None
    reproject(
        source,
        out,
        src_transform=src.transform,
        src_crs=src.crs,
        src_nodata=src_nodata,
        dst_transform=dst_transform,
        dst_crs=grid.crs,
        dst_nodata=nodata,
        resampling=resampling,
        num_threads=1,
    )
    return out


def open_raster(path: str) -> DatasetReader:
    """Open a raster, turning GDAL's errors into one that names the file."""
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise OSError(f"{path}: cannot open raster: {e}") from None
