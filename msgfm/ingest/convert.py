"""What download does to a fetched S1/S2 file before it lands: one band of a stacked file, units, scaling.

The fetched bytes were verified against the item (`file:size`, `file:checksum`) before. A file that needs
nothing is moved into place unchanged; otherwise a one-band GeoTIFF is written atomically under the asset's
final name:

- a stacked file (`msgfm:band`): the asset's band only.
- S1 in linear power (`sentinel-1-rtc`, or a `raster:bands` unit saying linear): 10 log10(x) dB, the unit
  the registry and the model use; zero, negative and nodata pixels become NaN, declared as nodata.
- S1 of an integer type is uncalibrated GRD (digital numbers, not backscatter): refused, with a message.
- S2 bands to the registry's reflectance x 10000 (uint16, nodata 0): DN x gain + bias, where gain is the
  `raster:bands` scale x 10000 (undeclared: 1 for integers, 10000 for float reflectance 0-1) and bias the
  declared offset x 10000 or, for processing baseline 04.00 and later without one, -1000
  (BOA_ADD_OFFSET / RADIO_ADD_OFFSET; msgfm.ingest.records.s2_scaling). A pixel the bias takes below 1
  (negative reflectance of dark water) becomes 1, since 0 is nodata. Values that do not land on whole
  steps of 1e-4 reflectance (a float file of other units) are refused: the conversion must be lossless.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from msgfm.geo.io import atomic_path
from msgfm.ingest.fetch import DownloadError
from msgfm.ingest.records import AssetRecord

LOSSLESS_TOLERANCE = 0.01
"""Most distance of a converted S2 value from a whole reflectance x 10000 step (float32 rounding is ~1e-3)."""


REFLECTANCE_MAX = 2.0
"""Largest float value read as reflectance 0-1 (snow reaches ~1.5); a float file above it is left to the raw gate."""


def land(source: Path, dest: Path, asset: AssetRecord) -> dict[str, Any]:
    """Put the fetched file `source` at `dest`, converted as the module docstring says (moved when nothing to do).

    Returns the asset fields that now describe the file (`raster:bands`, `msgfm:converted`); {} when unchanged.
    """
    import rasterio

    read = _read_band(source, dest, asset)
    if read is None:
        if source != dest:
            os.replace(source, dest)
        return {}
    data, profile, scaling = read
    nodata, description = profile.pop("nodata"), profile.pop("description")
    described: dict[str, Any] = {}
    if asset.linear:
        data = linear_to_db(data, nodata)
        profile |= {"dtype": "float32", "nodata": float("nan")}
        described = {"raster:bands": [{"data_type": "float32", "unit": "dB"}], "msgfm:converted": "linear power to dB"}
    elif scaling is not None:
        described = {
            "raster:bands": [{"data_type": "uint16", "nodata": 0, "scale": 0.0001, "offset": 0}],
            "msgfm:converted": f"{data.dtype} x {scaling[0]:g} {scaling[1]:+g} to reflectance x 10000",
        }
        data = s2_to_registry(data, nodata, *scaling, asset.key)
        profile |= {"dtype": "uint16", "nodata": 0}
    else:
        profile["nodata"] = nodata
    with atomic_path(dest, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as out:
        out.write(data)
        if description:
            out.set_band_description(1, description)
    return described


def _read_band(
    source: Path, dest: Path, asset: AssetRecord
) -> tuple[np.ndarray, dict[str, Any], tuple[float, float] | None] | None:
    """(pixels, profile with nodata and description, S2 scaling) of the asset's band; None: land the file as is."""
    import rasterio
    import rasterio.errors

    band = asset.band or 1
    try:
        with rasterio.open(source) as src:
            if not 1 <= band <= src.count:
                raise DownloadError(f"{dest.stem}: band {band} asked of a file with {src.count} bands")
            dtype = np.dtype(src.dtypes[band - 1])
            if asset.sensor == "s1" and dtype.kind in "iu":
                raise DownloadError(
                    f"{asset.key}: {dtype} Sentinel-1 values are uncalibrated GRD digital numbers, not backscatter; "
                    "calibrate them to sigma0/gamma0 (dB or linear power) first, or use a calibrated collection "
                    "such as sentinel-1-rtc; refused"
                )
            scaling = _s2_gain_bias(asset, dtype)
            if asset.band is None and not asset.linear and scaling is None:
                return None
            data = src.read([band])
            profile = {**src.profile, "count": 1, "driver": "GTiff", "description": src.descriptions[band - 1]}
    except rasterio.errors.RasterioError as e:
        if source == dest:
            return None  # kept as fetched: the raw gate names an unreadable file
        raise DownloadError(f"{dest.stem}: fetched file unreadable: {e}") from None
    if scaling is not None and asset.s2_scaling[0] is None and dtype.kind == "f" and _above(data, REFLECTANCE_MAX):
        scaling = None  # undeclared float beyond reflectance 0-1: not ours to guess, the raw gate says wrong dtype
        if asset.band is None:
            return None
    return data, profile, scaling


def _above(data: np.ndarray, limit: float) -> bool:
    finite = data[np.isfinite(data)]
    return bool(finite.size) and float(finite.max()) > limit


def _s2_gain_bias(asset: AssetRecord, dtype: np.dtype) -> tuple[float, float] | None:
    """(gain, bias) taking an S2 band asset of this file type to uint16 reflectance x 10000; None: leave it as is."""
    if asset.s2_scaling is None:
        return None
    gain, bias = asset.s2_scaling
    if gain is None:
        gain = 10000.0 if dtype.kind == "f" else 1.0
    if dtype.kind != "f" and (gain, bias) == (1.0, 0.0):
        return None  # integer reflectance x 10000 (uint16, or int16 the raw gate judges)
    return float(gain), float(bias)


def s2_to_registry(data: np.ndarray, nodata: float | None, gain: float, bias: float, key: str) -> np.ndarray:
    """S2 DN x gain + bias as uint16 reflectance x 10000 (nodata 0); DownloadError when it is not lossless."""
    x = data.astype(np.float64)
    bad = ~np.isfinite(x) | (x == 0)
    if nodata is not None and np.isfinite(nodata):
        bad |= x == nodata
    value = x[~bad] * gain + bias
    steps = np.rint(value)
    off = float(np.abs(value - steps).max()) if value.size else 0.0
    if off > LOSSLESS_TOLERANCE or (steps.size and steps.max() > np.iinfo(np.uint16).max):
        raise DownloadError(
            f"{key}: S2 values x {gain:g} {bias:+g} are not whole steps of reflectance x 10000 in 0-65535 "
            f"(off by up to {off:.3g}, largest {steps.max() if steps.size else 0:.0f}): not converted losslessly; "
            "declare raster:bands scale/offset or supply reflectance x 10000"
        )
    out = np.zeros(x.shape, np.uint16)
    out[~bad] = np.clip(steps, 1, None).astype(np.uint16)
    return out


def linear_to_db(power: np.ndarray, nodata: float | None) -> np.ndarray:
    """10 log10 of linear backscatter (float32); nodata, zero, negative and non-finite pixels become NaN."""
    x = power.astype(np.float64)
    bad = ~np.isfinite(x) | (x <= 0)
    if nodata is not None and np.isfinite(nodata):
        bad |= x == nodata
    out = np.full(x.shape, np.nan, np.float32)
    out[~bad] = (10.0 * np.log10(x[~bad])).astype(np.float32)
    return out
