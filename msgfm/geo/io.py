"""Raster and file I/O shared by every stage: atomic writes, COG output, checksums.

Every file a stage writes goes to a temporary name in the destination folder and is renamed into
place, so a killed stage never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix or ".part"
    remove_stale_temporaries(path, suffix)
    # pid + random: unique per writer, and the next writer can tell a killed run's file from a live one's
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes files private; outputs should read like any other file
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | Path, suffix: str | None = None) -> None:
    """Remove `atomic_path`'s temporary files of `path` left by a killed run (SIGKILL skips its cleanup).

    A temporary whose writer (the pid in its name) is still running is another live write: kept.
    """
    path = Path(path)
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix or '.part')}"):
        pid = stale.name[len(prefix) :].partition("-")[0]
        if not (pid.isdigit() and _alive(int(pid))):
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` atomically (stable bytes for DVC)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_cog(
    path: str | Path,
    array: np.ndarray,
    *,
    crs: CRS | str,
    transform: Affine,
    nodata: float | None = None,
    band_names: list[str] | tuple[str, ...] | None = None,
    blocksize: int = 256,
    compress: str = "deflate",
    tags: dict[str, str] | None = None,
) -> Path:
    """Write a (C, H, W) or (H, W) array as a Cloud-Optimized GeoTIFF, atomically.

    GDAL's COG driver is create-copy only, so the raster is built in memory as a GTiff first.
    Output bytes are deterministic for the same inputs (no timestamps are written).
    """
    data = array[None] if array.ndim == 2 else array
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "count": count,
        "height": height,
        "width": width,
        "dtype": data.dtype.name,
        "crs": CRS.from_user_input(crs),
        "transform": transform,
        "nodata": nodata,
    }
    path = Path(path)
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
            if band_names is not None:
                for i, name in enumerate(band_names, start=1):
                    dst.set_band_description(i, name)
            if tags:
                dst.update_tags(**tags)
        with mem.open() as src, atomic_path(path, suffix=".tif") as tmp:
            rasterio.shutil.copy(
                src,
                tmp,
                driver="COG",
                BLOCKSIZE=blocksize,
                COMPRESS=compress,
                PREDICTOR="YES" if compress != "none" else "NO",
                OVERVIEWS="AUTO" if min(height, width) > blocksize else "NONE",
                NUM_THREADS="1",
            )
    return path


def read_raster(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read all bands of a raster as (C, H, W) with its profile; errors name the file."""
    path = Path(path)
    try:
        with rasterio.open(path) as src:
            return src.read(), dict(src.profile)
    except rasterio.errors.RasterioIOError as e:
        raise RasterReadError(f"{path}: cannot read raster: {e}") from None


class RasterReadError(OSError):
    """A raster could not be opened or read; the message names the file."""
