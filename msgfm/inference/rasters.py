"""Windowed raster I/O of tiled inference: normalised strips of an input GeoTIFF, and a grid written block by block.

`RasterInput` reads one strip of windows at a time (rasterio windowed reads), pads what lies outside the
raster with the band mean, replaces nodata and NaN by the mean, and normalises with the sensor's registry
stats per window, so a window sees what a chip saw in pretraining. `GridWriter` writes finished rows into a scratch
tiled GTiff and turns it into a Cloud-Optimized GeoTIFF at the end (GDAL's COG driver is create-copy only),
optionally quantised to int8 with one scale stored as the bands' scale; neither ever holds the whole raster.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from msgfm.geo.io import atomic_path
from msgfm.sensors import get_sensor

DATETIME_TAGS = ("datetime", "TIFFTAG_DATETIME")
"""GeoTIFF metadata tags read for the acquisition time when --datetime is not given."""
INT8_MAX = 127
GDAL_CACHE_MB = (
    128  # GDAL's block cache defaults to 5% of RAM: dirty output blocks would fill it, scaling with the raster
)
MAX_BLOCK_BYTES = 8 << 20  # a pixel-interleaved block of 384 float32 bands at 256 px would be 100 MB


def block_px(count: int, itemsize: int = 4) -> int:
    """Tile side (256 down to 16) whose pixel-interleaved block of `count` bands stays under MAX_BLOCK_BYTES."""
    side = 256
    while side > 16 and side * side * count * itemsize > MAX_BLOCK_BYTES:
        side //= 2
    return side


class InferenceInputError(ValueError):
    """An input raster cannot be run through the model; the message names the file and the problem."""


class RasterInput:
    """An open GeoTIFF of one sensor: grid, metadata, and normalised strip reads with mean padding."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.src = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as e:
            raise InferenceInputError(f"{self.path}: cannot read raster: {e}") from None
        if self.src.crs is None:
            self.src.close()
            raise InferenceInputError(f"{self.path}: the raster has no CRS, so its outputs cannot be georeferenced")
        self.sensor: str | None = None
        self.bands: tuple[str, ...] = ()

    def __enter__(self) -> RasterInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.src.close()

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.src.height, self.src.width

    def bind(self, sensor: str, bands: Sequence[str]) -> None:
        """Set the sensor and band names the pixels are normalised with."""
        self.sensor, self.bands = sensor, tuple(bands)
        self._mean = get_sensor(sensor).stats(self.bands)[0]

    def read_strip(self, row0: int, height: int, col0: int, width: int) -> np.ndarray:
        """(C, height, width) float32 pixels [row0, row0+height) x [col0, col0+width); outside, nodata, NaN -> mean."""
        if self.sensor is None:
            raise RuntimeError("bind() the sensor and bands before reading")
        h, w = self.shape
        out = np.broadcast_to(self._mean[:, None, None], (len(self.bands), height, width)).copy()
        r0, r1, c0, c1 = max(row0, 0), min(row0 + height, h), max(col0, 0), min(col0 + width, w)
        if r0 < r1 and c0 < c1:
            try:
                pixels = self.src.read(window=Window(c0, r0, c1 - c0, r1 - r0), out_dtype=np.float32)
            except rasterio.errors.RasterioIOError as e:
                raise InferenceInputError(f"{self.path}: cannot read rows {r0}..{r1}: {e}") from None
            invalid = ~np.isfinite(pixels)
            if self.src.nodata is not None:
                invalid |= pixels == self.src.nodata
            pixels = np.where(invalid, self._mean[:, None, None], pixels)
            out[:, r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = pixels
        return out

    def normalise(self, windows: np.ndarray) -> np.ndarray:
        """(B, C, h, w) physical windows -> normalised, per window (relative bands subtract each window's mean)."""
        return get_sensor(self.sensor).normalise(windows, self.bands)

    def acquired(self, override: dt.datetime | None = None) -> dt.datetime:
        """Acquisition time: `override`, else the file's datetime tag; an error names the file when neither exists."""
        if override is not None:
            return override if override.tzinfo else override.replace(tzinfo=dt.UTC)
        tags = self.src.tags()
        for tag in DATETIME_TAGS:
            if tag in tags:
                text = tags[tag].strip()
                for fmt in ("%Y:%m:%d %H:%M:%S", None):
                    try:
                        when = dt.datetime.strptime(text, fmt) if fmt else dt.datetime.fromisoformat(text)
                    except ValueError:
                        continue
                    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
                raise InferenceInputError(f"{self.path}: tag {tag}={text!r} is not a date and time")
        raise InferenceInputError(
            f"{self.path}: no acquisition time in the file's tags {list(DATETIME_TAGS)}; pass --datetime"
        )


def check_same_grid(inputs: Sequence[RasterInput]) -> None:
    """All inputs on one pixel grid (CRS, transform, size); the error names the first file that differs."""
    first = inputs[0]
    for other in inputs[1:]:
        a, b = first.src, other.src
        if (a.crs, a.transform, a.shape) != (b.crs, b.transform, b.shape):
            raise InferenceInputError(
                f"{other.path} is not on the grid of {first.path} (CRS {b.crs} vs {a.crs}, transform, "
                f"{b.shape} vs {a.shape} px): co-register the inputs first"
            )


def quantisation_scale(max_abs: float) -> float:
    """int8 scale: value = code * scale, codes in [-127, 127]."""
    return float(max_abs) / INT8_MAX if max_abs > 0 else 1.0


def quantise(values: np.ndarray, scale: float) -> np.ndarray:
    """float values -> int8 codes round(values / scale), clipped to [-127, 127]."""
    return np.clip(np.rint(values / scale), -INT8_MAX, INT8_MAX).astype(np.int8)


class GridWriter:
    """A (C, H, W) grid written by row blocks into a scratch tiled GTiff beside the output (float32 by default)."""

    def __init__(
        self, out_path: Path, shape: tuple[int, int, int], crs: CRS, transform: Affine, dtype: str = "float32"
    ) -> None:
        self.out_path, self.shape, self.crs, self.transform, self.dtype = out_path, shape, crs, transform, dtype
        self.max_abs = 0.0
        out_path.parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".scratch", dir=out_path.parent))
        self.scratch = self._dir / "grid.tif"
        self._dst = rasterio.open(self.scratch, "w", **self._profile(dtype))

    def _profile(self, dtype: str) -> dict[str, Any]:
        """A tiled, uncompressed GTiff profile of the grid (blocks rewritten in any order stay cheap)."""
        count, height, width = self.shape
        return {
            "driver": "GTiff",
            "count": count,
            "height": height,
            "width": width,
            "dtype": dtype,
            "crs": self.crs,
            "transform": self.transform,
            "tiled": True,
            "blockxsize": block_px(count),
            "blockysize": block_px(count),
            "BIGTIFF": "IF_SAFER",
        }

    def write_rows(self, row0: int, block: np.ndarray) -> None:
        """Write finished rows (C, rows, W) starting at output row `row0`."""
        self.max_abs = max(self.max_abs, float(np.abs(block).max(initial=0.0)))
        self._dst.write(block.astype(self.dtype, copy=False), window=Window(0, row0, self.shape[2], block.shape[1]))

    def close(self) -> None:
        """Flush the scratch grid to disk (it stays readable until `cleanup`)."""
        if not self._dst.closed:
            self._dst.close()

    def row_blocks(self, rows: int = 64) -> Iterator[tuple[int, np.ndarray]]:
        """Read the closed scratch grid back in (first row, (C, rows, W)) blocks."""
        with rasterio.open(self.scratch) as src:
            for row0 in range(0, src.height, rows):
                n = min(rows, src.height - row0)
                yield row0, src.read(window=Window(0, row0, src.width, n))

    def to_cog(
        self,
        band_names: Sequence[str],
        tags: dict[str, str],
        scale: float | None = None,
        overviews: bool = False,
        nodata: float | None = None,
    ) -> Path:
        """Write the grid as a COG at out_path: int8 codes when `scale` is given (the bands' scale), else as written."""
        self.close()
        source = self.scratch
        if scale is None:
            with rasterio.open(source, "r+") as dst:
                self._describe(dst, band_names, tags, None, nodata)
        else:
            source = self._dir / "final.tif"
            with rasterio.open(source, "w", **self._profile("int8")) as dst:
                for row0, block in self.row_blocks():
                    dst.write(quantise(block, scale), window=Window(0, row0, self.shape[2], block.shape[1]))
                self._describe(dst, band_names, tags, scale, nodata)
        with rasterio.open(source) as src, atomic_path(self.out_path, suffix=".tif") as tmp:
            rasterio.shutil.copy(
                src,
                tmp,
                driver="COG",
                BLOCKSIZE=block_px(self.shape[0]),
                COMPRESS="DEFLATE",
                PREDICTOR="YES",
                OVERVIEWS="AUTO" if overviews else "NONE",
                RESAMPLING="NEAREST",
                BIGTIFF="IF_SAFER",
                NUM_THREADS="1",
            )
        return self.out_path

    @staticmethod
    def _describe(dst, band_names: Sequence[str], tags: dict[str, str], scale: float | None, nodata) -> None:
        """Band names, tags, the int8 scale and nodata on an open dataset."""
        for i, name in enumerate(band_names, start=1):
            dst.set_band_description(i, name)
        if scale is not None:
            dst.scales = (scale,) * dst.count
        if nodata is not None:
            dst.nodata = nodata
        dst.update_tags(**tags)

    def cleanup(self) -> None:
        """Remove the scratch folder."""
        self.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def bounded_gdal_cache() -> rasterio.Env:
    """A rasterio environment whose GDAL block cache holds at most GDAL_CACHE_MB."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


@contextlib.contextmanager
def grid_writer(
    out_path: Path, shape: tuple[int, int, int], crs: CRS, transform: Affine, dtype: str = "float32"
) -> Iterator[GridWriter]:
    """A GridWriter whose scratch folder is removed however the block ends."""
    writer = GridWriter(out_path, shape, crs, transform, dtype)
    try:
        yield writer
    finally:
        writer.cleanup()
