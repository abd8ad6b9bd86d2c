"""One downloaded asset file: the layout its sensor expects, what the file holds, and whether its CRS is declared.

Expected layouts come from msgfm.sensors: an asset named after one of the sensor's bands holds that
band (S2 `B04`, S1 `VV`); a sensor whose bands are not split into assets holds all of them in each
data asset (RGB `image`, DSM `dsm`); other assets of a band-split sensor are auxiliary (S2
`cloud_mask`) and are only checked for being readable and georeferenced. The raw gate
(`msgfm.validation.raw`) sums these per item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msgfm.landcover import LEGEND, NODATA
from msgfm.sensors import SENSORS

CRS_FIELDS = ("proj:code", "proj:epsg", "proj:wkt2")
"""STAC projection fields declaring a CRS, in the order they are read."""


@dataclass(frozen=True)
class AssetLayout:
    """What a band-bearing asset must look like; None fields are not checked."""

    bands: int
    dtype: str
    nodata: float | None
    valid_range: tuple[float, float]
    codes: tuple[int, ...] | None = None
    """The class codes a categorical asset may hold (land cover); None for measurements."""


def asset_layout(sensor: str, key: str, keys: list[str]) -> AssetLayout | None:
    """Expected layout of asset `key` of a `sensor` item whose required assets are `keys`; None if auxiliary."""
    if sensor == "landcover":
        return AssetLayout(1, "uint8", NODATA, (NODATA, max(c.code for c in LEGEND)), tuple(c.code for c in LEGEND))
    spec = SENSORS.get(sensor)
    if spec is None:
        return None
    by_name = {b.name.lower(): b for b in spec.bands}
    band = by_name.get(key.lower())
    if band is not None:
        return AssetLayout(1, band.dtype, band.nodata, spec.valid_range)
    if any(k.lower() in by_name for k in keys):
        return None  # an auxiliary asset (mask, scene classification) of a band-split sensor
    first = spec.bands[0]
    return AssetLayout(len(spec.bands), first.dtype, first.nodata, spec.valid_range)


def open_asset(
    path: Path, layout: AssetLayout | None, max_read_px: int, max_pixels: int | None = None
) -> dict[str, Any]:
    """Describe one asset file; problems become a short `error` text, never an exception.

    A header claiming more than `max_pixels` pixels is refused before any pixel is read.
    """
    import rasterio
    from rasterio.errors import RasterioError

    if not path.is_file():
        return {"error": "file missing from data/raw"}
    if path.stat().st_size == 0:
        return {"error": "zero-byte file"}
    try:
        src = rasterio.open(path)
    except RasterioError as e:
        return {"error": f"not a readable GeoTIFF ({_short(e)})"}
    with src:
        out: dict[str, Any] = {"crs": src.crs.to_string() if src.crs else None, "count": src.count}
        out["dtype"] = ",".join(sorted(set(src.dtypes)))
        if max_pixels is not None and src.width * src.height > max_pixels:
            return {**out, "error": _too_large(src.width, src.height, max_pixels)}
        scale = max(1, math.ceil(max(src.height, src.width) / max_read_px))
        shape = (src.count, max(1, src.height // scale), max(1, src.width // scale))
        try:
            data = src.read(out_shape=shape)
        except RasterioError as e:
            return {**out, "error": f"pixel data unreadable, file truncated or corrupt ({_short(e)})"}
        nodata = src.nodata if src.nodata is not None else (layout.nodata if layout else None)
    if layout is None:
        return out
    finite = np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, bool)
    if nodata is None:
        is_nodata = np.zeros(data.shape, bool)
    elif isinstance(nodata, float) and math.isnan(nodata):
        is_nodata = np.isnan(data)
        finite |= is_nodata
    else:
        is_nodata = data == nodata
    valid = finite & ~is_nodata
    values = data[valid]
    lo, hi = layout.valid_range
    out.update(
        nodata_fraction=float(is_nodata.mean()),
        nonfinite=int((~finite).sum()),
        out_of_range=float(((values < lo) | (values > hi)).sum()),
        valid_pixels=int(values.size),
        value_min=float(values.min()) if values.size else None,
        value_max=float(values.max()) if values.size else None,
    )
    if layout.codes is not None:
        out["foreign_codes"] = sorted(set(np.unique(values).tolist()) - set(layout.codes))
    return out


def _too_large(width: int, height: int, max_pixels: int) -> str:
    """The reason of a raster whose header claims too many pixels to read."""
    return f"header claims {width} x {height} px ({width * height:,} px), above gates.max_pixels {max_pixels:,}"


def _short(err: Exception) -> str:
    """The first line of an error's text (its type when empty), cut to 160 characters for a reason."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]


def crs_mismatch(file_crs: str, item: dict[str, Any], key: str) -> str:
    """How the file's CRS differs from the one the item declares for asset `key` ("" if it does not or none is)."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    asset = (item.get("assets") or {}).get(key) or {}
    props = item.get("properties") or {}
    for where, fields in (("asset", asset), ("item", props)):
        field = next((f for f in CRS_FIELDS if fields.get(f) not in (None, "")), None)
        if field is None:
            continue
        value = fields[field]
        declared = f"EPSG:{value}" if field == "proj:epsg" else str(value)
        try:
            if CRS.from_user_input(declared) == CRS.from_user_input(file_crs):
                return ""
        except CRSError:
            return f"is in {file_crs}, but the {where}'s {field} {value!r} is not a CRS"
        return f"is in {file_crs}, but the {where}'s {field} says {declared}"
    return ""
