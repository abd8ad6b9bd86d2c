"""AOIs of items that carry no `msgfm:aoi` (real catalogs never do): squares of a UTM tile grid.

An item belongs to the `source.aoi_tile_m` square, in the UTM zone of its place, that holds the centre
of its footprint (clipped to `source.bbox` when one is set, so the scenes of one small search share one
AOI whatever their size). Names are stable and say where the square is: `{source.aoi}_{EPSG}_{E}_{N}`,
the square's south-west corner in km (`aoi_32633_400_5340`). `aoi_tile_m: null` gives every such item
the one AOI `source.aoi`. The AOI's grid is then chosen by coregister, always in metres (msgfm.coreg.aoi_grids).
"""

from __future__ import annotations

import math

from msgfm.config import SourceParams
from msgfm.geo.grids import utm_crs


def aoi_name(square: tuple[str, tuple[float, float, float, float]] | None, cfg: SourceParams) -> str:
    """`{source.aoi}_{EPSG}_{E km}_{N km}` of a square; `source.aoi` when there is none."""
    if square is None:
        return cfg.aoi
    crs, (west, south, _, _) = square
    return f"{cfg.aoi}_{crs.removeprefix('EPSG:')}_{west // 1000:.0f}_{south // 1000:.0f}"


def aoi_square(bbox: list[float] | None, cfg: SourceParams) -> tuple[str, tuple[float, float, float, float]] | None:
    """(UTM CRS, square bounds in metres) of the AOI an item of WGS84 footprint `bbox` belongs to; None: no square.

    The square is also the window download reads of a remote COG (msgfm.ingest.window).
    """
    if cfg.aoi_tile_m is None or bbox is None or not all(math.isfinite(v) for v in bbox):
        return None
    west, south, east, north = _clipped(bbox, cfg.bbox)
    lon, lat = (west + east) / 2, (south + north) / 2
    if not (-180 <= lon <= 180 and -80 <= lat <= 84):
        return None  # outside UTM's latitudes (or not degrees): the raw gate and coregister say why
    from rasterio.warp import transform

    crs = utm_crs(lon, lat)
    (x,), (y,) = transform("EPSG:4326", crs, [lon], [lat])
    tile = cfg.aoi_tile_m
    x0, y0 = math.floor(x / tile) * tile, math.floor(y / tile) * tile
    return crs, (float(x0), float(y0), float(x0 + tile), float(y0 + tile))


def _clipped(bbox: list[float], search: list[float] | None) -> list[float]:
    """`bbox` intersected with the search box, when they overlap; `bbox` otherwise."""
    if search is None:
        return bbox
    clip = [max(bbox[0], search[0]), max(bbox[1], search[1]), min(bbox[2], search[2]), min(bbox[3], search[3])]
    return clip if clip[0] <= clip[2] and clip[1] <= clip[3] else bbox
