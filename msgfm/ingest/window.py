"""Windowed reads of remote COGs: only the AOI's square (plus a margin) travels, as HTTP range requests.

A real scene is a 110 km Sentinel-2 tile or a 250 km Sentinel-1 swath; an AOI is a `source.aoi_tile_m`
square of it (msgfm.ingest.aois). For an http(s) asset of an item whose AOI square is known (derived
from its footprint), download reads through GDAL's `/vsicurl/` only the pixels of the square grown by
`download.window_margin_m` (room for co-registration shifts and the resampling kernel), snapped outwards
to the asset's own pixel grid (no resampling), and writes them as a tiled GeoTIFF, landed like a whole
fetched file (S1 dB, S2 scaling: msgfm.ingest.convert). A cloud-optimised file is tiled, so GDAL fetches
the header and the tiles under the window, nothing else.

- Verified: a HEAD request gives the file's size, checked against `file:size` when the item declares it
  (`file:checksum` covers the whole file and cannot be checked on a window), and its validators (ETag,
  Last-Modified), asked again after the read: a file that changed meanwhile is never kept.
- Recorded and resumable: beside the asset, `{asset}.window.json` holds the source URL (without its
  query string: no signing secrets), the square, the margin, the pixel window, the remote size and
  validators, and the written file's size and SHA-256. A re-run whose record matches the request and
  the file on disk reads nothing.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import rasterio
import rasterio.errors
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from msgfm.config import DownloadParams
from msgfm.geo.io import atomic_path, atomic_write_json, sha256_file
from msgfm.ingest.aois import Square
from msgfm.ingest.convert import land
from msgfm.ingest.fetch import DownloadError, with_retries
from msgfm.ingest.redact import redact
from msgfm.ingest.sources import AssetRecord, ItemRecord

ROWS_PER_READ = 1024
"""Rows of the window read and written at a time: memory stays bounded for large fine-resolution AOIs."""


@dataclass(frozen=True)
class Remote:
    """What a HEAD request says of a remote file: its size and validators."""

    size: int | None
    etag: str | None
    last_modified: str | None


def window_square(rec: ItemRecord, asset: AssetRecord, cfg: DownloadParams) -> Square | None:
    """The AOI square to read of an asset when it is read by window (remote http(s), derived AOI); else None."""
    remote = urlparse(asset.href).scheme.lower() in ("http", "https")
    return rec.square if cfg.windowed and remote else None


def fetch_window(asset: AssetRecord, dest: Path, square: Square, cfg: DownloadParams) -> tuple[int, dict[str, Any]]:
    """Read the AOI's window of a remote COG and land it like a fetched file (msgfm.ingest.convert.land).

    A window already read for this request and intact on disk is kept (0 bytes); returns the bytes written
    and the asset fields that describe the file (its window, and a conversion when `land` made one).
    """
    done = _completed(dest, asset, square, cfg)
    if done is not None:
        return 0, done
    staged = dest.with_name(f"{dest.stem}.source.tif")
    try:
        read = _read_window(asset, staged, square, cfg)
        if asset.sensor in ("s1", "s2") or asset.band is not None:
            described = land(staged, dest, asset)
        else:
            os.replace(staged, dest)
            described = {}
    finally:
        staged.unlink(missing_ok=True)
    pixels = read["window"]
    described |= {
        "msgfm:window": {"of": redact(asset.href), **pixels},
        "proj:shape": [pixels["height"], pixels["width"]],
        "proj:transform": read["transform"],
    }
    _write_record(dest, asset, square, cfg, read | {"asset_fields": described})
    return dest.stat().st_size, described


def _record_path(dest: Path) -> Path:
    """`{asset}.window.json` beside the asset file `{asset}.tif`."""
    return dest.with_name(f"{dest.stem}.window.json")


def _completed(dest: Path, asset: AssetRecord, square: Square, cfg: DownloadParams) -> dict[str, Any] | None:
    """The asset fields of a window already read for this request and intact on disk; None: read it."""
    path = _record_path(dest)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    wanted = _request(asset, square, cfg)
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in wanted.items()):
        return None
    if asset.size is not None and record.get("remote_size") != asset.size:
        return None
    local = record.get("local") or {}
    if not dest.is_file() or dest.stat().st_size != local.get("bytes") or sha256_file(dest) != local.get("sha256"):
        return None
    return record.get("asset_fields") or {}


def _write_record(dest: Path, asset: AssetRecord, square: Square, cfg: DownloadParams, read: dict[str, Any]) -> None:
    """Record a finished window (what was asked, what the server had, what landed) as `{asset}.window.json`."""
    record = _request(asset, square, cfg) | read
    record["local"] = {"bytes": dest.stat().st_size, "sha256": sha256_file(dest)}
    atomic_write_json(_record_path(dest), record)


def _request(asset: AssetRecord, square: Square, cfg: DownloadParams) -> dict[str, Any]:
    """What identifies a window request: the URL without its query (signatures change), square and margin."""
    crs, bounds = square
    return {"href": redact(asset.href), "square": {"crs": crs, "bounds": list(bounds)}, "margin_m": cfg.window_margin_m}


def _read_window(asset: AssetRecord, dest: Path, square: Square, cfg: DownloadParams) -> dict[str, Any]:
    """Write the asset's pixels under the AOI square (plus margin) to `dest`; return what the record keeps.

    Network failures are retried (`download.retries`, `backoff_s`); the server's file is HEAD-checked before
    and after the read, so a window is never cut from a file that changed or is not the declared size.
    """

    def attempt() -> dict[str, Any]:
        before = _head(asset, cfg)
        window = _read(asset, dest, square, cfg)
        after = _head(asset, cfg)
        if (after.etag, after.last_modified, after.size) != (before.etag, before.last_modified, before.size):
            dest.unlink(missing_ok=True)
            raise _Transient("the server's file changed during the windowed read")
        return {
            "window": window["window"],
            "transform": window["transform"],
            "remote_size": before.size,
            "etag": before.etag,
            "last_modified": before.last_modified,
        }

    return with_retries(attempt, cfg, asset.key, (_Transient,), f"windowed read of {redact(asset.href)} ")


class _Transient(DownloadError):
    """A failure worth another attempt (5xx, dropped connection, a file changed mid-read)."""


def _head(asset: AssetRecord, cfg: DownloadParams) -> Remote:
    """HEAD the asset's URL: its size (checked against `file:size`) and validators."""
    import requests

    url = redact(asset.href)
    try:
        r = requests.head(asset.href, allow_redirects=True, timeout=cfg.timeout_s)
    except requests.RequestException as e:
        raise _Transient(f"HEAD {url}: {type(e).__name__}") from None
    if r.status_code >= 500 or r.status_code == 429:
        raise _Transient(f"HEAD {url}: HTTP {r.status_code}")
    if r.status_code >= 400:
        raise DownloadError(f"{asset.key}: HTTP {r.status_code} for HEAD {url}")
    length = r.headers.get("Content-Length")
    size = int(length) if length and length.isdigit() else None
    if asset.size is not None and size is not None and size != asset.size:
        raise DownloadError(f"{asset.key}: {url} is {size} bytes on the server, the item says file:size {asset.size}")
    etag = r.headers.get("ETag")
    return Remote(size, etag if etag and not etag.startswith("W/") else None, r.headers.get("Last-Modified"))


def _read(asset: AssetRecord, dest: Path, square: Square, cfg: DownloadParams) -> dict[str, Any]:
    """Read the window through /vsicurl/ and write it atomically to `dest`; return the pixel window and transform."""
    url = redact(asset.href)
    try:
        with _gdal_env(cfg), rasterio.open(asset.href) as src:
            window = pixel_window(src, square, cfg.window_margin_m, f"{asset.key} ({url})")
            profile = src.profile | {
                "driver": "GTiff",
                "width": int(window.width),
                "height": int(window.height),
                "transform": src.window_transform(window),
                "tiled": True,
                "blockxsize": 256,
                "blockysize": 256,
                "compress": "deflate",
            }
            with atomic_path(dest, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as out:
                _copy(src, out, window)
    except rasterio.errors.RasterioIOError as e:  # network or not (yet) readable: worth another attempt
        raise _Transient(f"reading {url}: {redact(str(e))}") from None
    except rasterio.errors.RasterioError as e:  # readable but unusable (a CRS GDAL cannot use, ...)
        raise DownloadError(f"{asset.key}: cannot cut the AOI's window from {url}: {redact(str(e))}") from None
    pixels = {k: int(getattr(window, k)) for k in ("col_off", "row_off", "width", "height")}
    return {"window": pixels, "transform": list(profile["transform"])[:6]}


def pixel_window(src: rasterio.io.DatasetReader, square: Square, margin_m: float, name: str) -> Window:
    """The asset's pixel window covering the square grown by `margin_m`, snapped outwards and clipped to the file."""
    if src.crs is None:
        raise DownloadError(f"{name}: the file has no CRS, so the AOI's window cannot be found in it")
    crs, (west, south, east, north) = square
    grown = (west - margin_m, south - margin_m, east + margin_m, north + margin_m)
    left, bottom, right, top = transform_bounds(crs, src.crs, *grown, densify_pts=21)
    inverse = ~src.transform
    cols, rows = zip(*(inverse @ (x, y) for x in (left, right) for y in (bottom, top)), strict=True)
    col0, row0 = max(0, math.floor(min(cols))), max(0, math.floor(min(rows)))
    col1, row1 = min(src.width, math.ceil(max(cols))), min(src.height, math.ceil(max(rows)))
    if col1 <= col0 or row1 <= row0:
        raise DownloadError(f"{name}: the file does not overlap the AOI square {square[1]} ({crs})")
    return Window(col0, row0, col1 - col0, row1 - row0)


def _copy(src: rasterio.io.DatasetReader, out: rasterio.io.DatasetWriter, window: Window) -> None:
    """Copy the window's pixels in strips of ROWS_PER_READ rows, with band descriptions, tags, scales, offsets."""
    for row in range(0, int(window.height), ROWS_PER_READ):
        height = min(ROWS_PER_READ, int(window.height) - row)
        part = Window(window.col_off, window.row_off + row, window.width, height)
        out.write(src.read(window=part), window=Window(0, row, window.width, height))
    out.update_tags(**src.tags())
    out.scales, out.offsets = src.scales, src.offsets
    for band, description in enumerate(src.descriptions, start=1):
        if description:
            out.set_band_description(band, description)
        out.update_tags(band, **src.tags(band))


def _gdal_env(cfg: DownloadParams) -> rasterio.Env:
    """GDAL's HTTP settings for one windowed read: no directory listing, download's timeout, merged ranges."""
    return rasterio.Env(
        GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
        GDAL_HTTP_TIMEOUT=str(math.ceil(cfg.timeout_s)),
        GDAL_HTTP_CONNECTTIMEOUT=str(math.ceil(cfg.timeout_s)),
        GDAL_HTTP_MAX_RETRY=str(cfg.retries),
        GDAL_HTTP_RETRY_DELAY=str(cfg.backoff_s),
        GDAL_HTTP_MERGE_CONSECUTIVE_RANGES="YES",
        GDAL_INGESTED_BYTES_AT_OPEN="32768",
    )
