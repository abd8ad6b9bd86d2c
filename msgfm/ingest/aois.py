"""AOIs of items that carry no `msgfm:aoi` (real catalogs never do): squares of a UTM tile grid.

A STAC API search with a `source.bbox` tiles the bbox into `source.aoi_tile_m` squares in the UTM zone of
its centre (`search_squares`): every square the bbox covers is an AOI, and an item contributes to each
square its footprint overlaps (`overlapping`; msgfm.ingest.api makes one record per item and square). Any
other item belongs to the square, in the UTM zone of its place, that holds the centre of its footprint
(clipped to `source.bbox` when one is set). Names are stable and say where the square is:
`{source.aoi}_{EPSG}_{E}_{N}`, the square's south-west corner in km (`aoi_32633_400_5340`).
`aoi_tile_m: null` gives every such item the one AOI `source.aoi`. The AOI's grid is then chosen by
coregister, always in metres (msgfm.coreg.aoi_grids).
"""

from __future__ import annotations

import math

from msgfm.config import SourceParams
from msgfm.geo.grids import utm_crs

Square = tuple[str, tuple[float, float, float, float]]
"""(UTM CRS, (west, south, east, north) in metres): one AOI square."""

MAX_SQUARES = 10_000
"""Most squares one search bbox may be tiled into (a continent at 1 km is a mistake, not a search)."""


def aoi_name(square: Square | None, cfg: SourceParams) -> str:
    """`{source.aoi}_{EPSG}_{E km}_{N km}` of a square; `source.aoi` when there is none."""
    if square is None:
        return cfg.aoi
    crs, (west, south, _, _) = square
    return f"{cfg.aoi}_{crs.removeprefix('EPSG:')}_{west // 1000:.0f}_{south // 1000:.0f}"


def aoi_square(bbox: list[float] | None, cfg: SourceParams) -> Square | None:
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


def search_squares(cfg: SourceParams) -> list[Square]:
    """Every `aoi_tile_m` square, in the UTM zone of the bbox's centre, that `source.bbox` covers; [] without both.

    Raises ValueError when the bbox would give more than MAX_SQUARES squares.
    """
    if cfg.aoi_tile_m is None or cfg.bbox is None:
        return []
    from rasterio.warp import transform_bounds

    west, south, east, north = cfg.bbox
    crs = utm_crs((west + east) / 2, (south + north) / 2)
    left, bottom, right, top = transform_bounds("EPSG:4326", crs, west, south, east, north, densify_pts=21)
    tile = cfg.aoi_tile_m
    xs = range(math.floor(left / tile) * tile, math.ceil(right / tile) * tile, tile)
    ys = range(math.floor(bottom / tile) * tile, math.ceil(top / tile) * tile, tile)
    if len(xs) * len(ys) > MAX_SQUARES:
        raise ValueError(
            f"source.bbox {cfg.bbox} covers {len(xs) * len(ys)} squares of source.aoi_tile_m {tile} m "
            f"(at most {MAX_SQUARES}); use a smaller bbox or larger squares"
        )
    return [(crs, (float(x), float(y), float(x + tile), float(y + tile))) for y in ys for x in xs]


def overlapping(bbox: list[float] | None, squares: list[Square]) -> list[Square]:
    """The squares a WGS84 footprint `bbox` overlaps (with some area), in the order given."""
    if bbox is None or not squares or not all(math.isfinite(v) for v in bbox):
        return []
    from rasterio.warp import transform_bounds

    found = []
    projected: dict[str, tuple[float, float, float, float]] = {}
    for crs, (west, south, east, north) in squares:
        if crs not in projected:
            projected[crs] = transform_bounds("EPSG:4326", crs, *bbox, densify_pts=21)
        left, bottom, right, top = projected[crs]
        if left < east and right > west and bottom < north and top > south:
            found.append((crs, (west, south, east, north)))
    return found
