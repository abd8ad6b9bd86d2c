"""The cloud and shadow mask of an S2 acquisition on its AOI grid, whatever the product offers.

One mask, one meaning (the simulator's `cloud_mask`, msgfm/chips/store.py): 0 clear, 1 cloud, 2 cloud
shadow, 255 nodata. Its source, in this order:

- `cloud_mask` (the simulated world): used as it is.
- `SCL`, the L2A scene classification (Sen2Cor, 20 m): class 3 (cloud shadows) is shadow; 8 (cloud medium
  probability), 9 (cloud high probability) and 10 (thin cirrus) are cloud; 0 (no data) is nodata; every
  other class (1 saturated, 2 dark area, 4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 11 snow)
  is clear.
- neither (L1C, or an L2A without SCL): the Braaten-Cohen-Yang test with Sentinel Hub's SWIR guard against
  snow, on the acquisition's own bands: cloud where B11 > 0.2 and (B03 > 0.39 or (B03 > 0.175 and
  B03 > B04)), reflectance. It finds bright clouds only: no shadows, and thin cirrus is missed.

Pairing counts codes 1 and 2 as a chip's `cloud_fraction`, and a reference is built only from pixels
whose mask is 0, so a cloudy pixel is never a clear chip's nor a registration reference's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msgfm.chips.store import MASK_CLOUD as CLOUD
from msgfm.chips.store import MASK_NODATA as NODATA
from msgfm.chips.store import MASK_SHADOW as SHADOW
from msgfm.chips.store import MASK_VALID as CLEAR
from msgfm.geo.grids import Grid, warp_to_grid
from msgfm.sensors import S2_L2A_BANDS

SCL_CLOUD = (8, 9, 10)
"""SCL classes that are cloud: medium and high probability, thin cirrus."""
SCL_SHADOW = (3,)
"""SCL class of cloud shadows."""
SCL_NODATA = 0

MASK_ASSETS = ("cloud_mask", "SCL")
"""Assets that carry a mask, in the order they are preferred; without one the spectral test runs."""


def mask_asset(assets: dict[str, Path]) -> str | None:
    """The asset an S2 acquisition's mask comes from (`cloud_mask`, then `SCL`); None: the spectral test."""
    return next((key for key in MASK_ASSETS if key in assets), None)


def scl_to_mask(scl: np.ndarray) -> np.ndarray:
    """SCL classes -> mask codes (see module docstring); uint8, same shape."""
    out = np.full(scl.shape, CLEAR, np.uint8)
    out[np.isin(scl, SCL_CLOUD)] = CLOUD
    out[np.isin(scl, SCL_SHADOW)] = SHADOW
    out[scl == SCL_NODATA] = NODATA
    return out


def spectral_mask(data: np.ndarray, bands: tuple[str, ...] = S2_L2A_BANDS) -> np.ndarray:
    """Braaten-Cohen-Yang clouds (with the B11 snow guard) of (C, H, W) reflectance x 10000; 0 is nodata."""
    b03, b04, b11 = (data[bands.index(b)].astype(np.float32) / 10000.0 for b in ("B03", "B04", "B11"))
    cloud = (b11 > 0.2) & ((b03 > 0.39) | ((b03 > 0.175) & (b03 > b04)))
    out = np.where(cloud, CLOUD, CLEAR).astype(np.uint8)
    out[np.any(data == 0, axis=0)] = NODATA
    return out


def cloud_mask_on_grid(path: Path | None, key: str | None, grid: Grid, data: np.ndarray) -> np.ndarray:
    """The (H, W) mask of an acquisition whose bands on `grid` are `data`, from asset `key` at `path` or spectral."""
    import rasterio
    from rasterio.enums import Resampling

    if key is None or path is None:
        return spectral_mask(data)
    with rasterio.open(path) as src:
        if key == "SCL":
            scl = warp_to_grid(src, grid, resampling=Resampling.nearest, dtype="uint8", nodata=SCL_NODATA)[0]
            return scl_to_mask(scl)
        return warp_to_grid(src, grid, resampling=Resampling.nearest, dtype="uint8", nodata=NODATA)[0]
