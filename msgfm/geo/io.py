"""Raster and file I/O shared by every stage: atomic writes, COG output, checksums, untrusted names.

Every file a stage writes goes to a temporary name in the destination folder and is renamed into
place, so a killed stage never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile


def safe_name(text: str) -> str:
    """A single path component from untrusted text: only [A-Za-z0-9._-], no leading dots, at most 120 chars."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")[:120]
    return name or "_"


def aoi_problem(aoi: object) -> str:
    """Why an AOI name cannot be a folder of data/coreg ('' when it can): it must be its own `safe_name`.

    Refused rather than sanitised, so two AOIs never merge into one folder under a changed name.
    """
    if not isinstance(aoi, str) or safe_name(aoi) != aoi:
        return f"AOI name {aoi!r} is not a safe folder name (only A-Za-z0-9._-, no leading dot, at most 120 chars)"
    return ""


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` resolves inside `folder` (symlinks followed)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error remove it."""
    path = Path(path)
    suffix = suffix or ".part"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path, suffix)
        # pid + random: unique per writer, and the next writer can tell a killed run's file from a live one's
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise (write_fault(e, path) or e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes files private; outputs should read like any other file
        os.replace(tmp_path, path)
    except (OSError, rasterio.errors.RasterioError) as e:
        raise (write_fault(e, path) or e) from e
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


# --- environment faults ------------------------------------------------------------------------

_ADVICE = {
    errno.ENOSPC: "free space or point out_dir elsewhere",
    errno.EDQUOT: "free space (disk quota exceeded) or point out_dir elsewhere",
    errno.EROFS: "make it writable or point out_dir elsewhere",
    errno.EACCES: "make it writable for this user or point out_dir elsewhere",
    errno.EPERM: "make it writable for this user or point out_dir elsewhere",
    errno.EIO: "check the disk (the kernel reported an I/O error)",
}
ENVIRONMENT_ERRNOS = frozenset(_ADVICE)
_MIN_FREE_BYTES = 1 << 20  # a write that fails with less than this free failed for want of space


class EnvironmentFault(Exception):
    """The machine, not the data, stopped a stage (disk full, read-only, no permission, I/O error).

    Not an OSError on purpose: the per-item handlers that turn read errors into quarantine rows must
    let it through, so good data is never quarantined for a full disk; `msgfm` exits 3 on it.
    """


def environment_fault(
    error: BaseException, path: str | Path | None = None, doing: str = "at"
) -> EnvironmentFault | None:
    """The EnvironmentFault an OSError with an environment errno stands for (None for any other error)."""
    if isinstance(error, EnvironmentFault):
        return error
    if not isinstance(error, OSError) or error.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = path if path is not None else (error.filename or "?")
    return _fault(error.errno, where, doing)


def write_fault(error: BaseException, path: str | Path) -> EnvironmentFault | None:
    """The EnvironmentFault behind a failed write of `path`, also where GDAL or Arrow hide the errno.

    GDAL reports a full disk as a bare "Write failed" and Arrow drops the errno, so when the errno is
    missing the destination's file system decides: read-only, or (almost) no space left.
    """
    fault = environment_fault(error, path, "writing")
    if fault is not None or not isinstance(error, (OSError, rasterio.errors.RasterioError)):
        return fault
    try:
        fs = os.statvfs(Path(path).parent)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return _fault(errno.EROFS, path, "writing")
    if fs.f_bavail * fs.f_frsize < _MIN_FREE_BYTES:
        return _fault(errno.ENOSPC, path, "writing")
    return None


def _fault(code: int, path: str | Path, doing: str) -> EnvironmentFault:
    """The one message of an environment fault: what, where, what to do."""
    return EnvironmentFault(f"environment error: {os.strerror(code).lower()} {doing} {path}: {_ADVICE[code]}")
