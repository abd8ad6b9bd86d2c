"""Conversions download applies to a fetched file before it lands: one band of a stacked file, linear S1 to dB.

Both write a one-band GeoTIFF atomically under the asset's final name; the fetched bytes were verified
against the item (`file:size`, `file:checksum`) before. Linear-power backscatter (`sentinel-1-rtc`, or a
`raster:bands` unit saying linear) becomes 10 log10(x) dB, the unit the registry and the model use;
zero, negative and nodata pixels become NaN, declared as the file's nodata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msgfm.geo.io import atomic_path
from msgfm.ingest.fetch import DownloadError


def one_band(source: Path, band: int, dest: Path, *, to_db: bool = False) -> None:
    """Write band `band` (1-based) of `source` as a one-band GeoTIFF at `dest`, in dB when `to_db`."""
    import rasterio
    import rasterio.errors

    try:
        with rasterio.open(source) as src:
            if not 1 <= band <= src.count:
                raise DownloadError(f"{dest.stem}: band {band} asked of a file with {src.count} bands")
            profile = {**src.profile, "count": 1, "driver": "GTiff"}
            data = src.read([band])
            nodata, description = src.nodata, src.descriptions[band - 1]
    except rasterio.errors.RasterioError as e:
        raise DownloadError(f"{dest.stem}: fetched file unreadable: {e}") from None
    if to_db:
        data = linear_to_db(data, nodata)
        profile |= {"dtype": "float32", "nodata": float("nan")}
    with atomic_path(dest, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as out:
        out.write(data)
        if description:
            out.set_band_description(1, description)


def linear_to_db(power: np.ndarray, nodata: float | None) -> np.ndarray:
    """10 log10 of linear backscatter (float32); nodata, zero, negative and non-finite pixels become NaN."""
    x = power.astype(np.float64)
    bad = ~np.isfinite(x) | (x <= 0)
    if nodata is not None and np.isfinite(nodata):
        bad |= x == nodata
    out = np.full(x.shape, np.nan, np.float32)
    out[~bad] = (10.0 * np.log10(x[~bad])).astype(np.float32)
    return out
