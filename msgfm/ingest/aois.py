"""AOIs of items that carry no `msgfm:aoi` (real catalogs never do): squares of a UTM tile grid.

A STAC API search with a `source.bbox` tiles the bbox into `source.aoi_tile_m` squares in the UTM zone of
its centre (`search_squares`): every square the bbox covers is an AOI, and an item contributes to each
square its footprint overlaps (`overlapping`; msgfm.ingest.api makes one record per item and square).
Items of a static catalog, a folder or a search without bbox are grouped by overlap instead
(`overlap_groups`): the footprints (`footprint`: the item's WGS84 geometry polygon, its bbox where it has
none, clipped to `source.bbox` when set) that share area, directly or through a chain of others, form one
AOI, so a co-located S1/S2 pair is one AOI wherever a square edge falls, and two places are two. Polygons,
not bboxes, are compared: two rotated S1 swaths side by side have overlapping bboxes but are two places.
A group's square is the union of its footprints' bounds in the UTM zone of its centre (`group_square`: the window
a remote COG is read by). Names are stable (the same footprints give the same names, in any order) and say
where the AOI is: `{source.aoi}_{EPSG}_{E}_{N}`, the south-west corner in km (`aoi_32633_400_5340`), with
`_2`, `_3` ... for further groups whose corner falls in the same kilometre. `aoi_tile_m: null` gives every
such item the one AOI `source.aoi`. The AOI's grid is then chosen by coregister, always in metres
(msgfm.coreg.aoi_grids).
"""

from __future__ import annotations

import math
from typing import Any

import shapely
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

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
    west, south, east, north = clipped(bbox, cfg.bbox)
    lon, lat = (west + east) / 2, (south + north) / 2
    if not (-180 <= lon <= 180 and -80 <= lat <= 84):
        return None  # outside UTM's latitudes (or not degrees): the raw gate and coregister say why
    from rasterio.warp import transform

    crs = utm_crs(lon, lat)
    (x,), (y,) = transform("EPSG:4326", crs, [lon], [lat])
    tile = cfg.aoi_tile_m
    x0, y0 = math.floor(x / tile) * tile, math.floor(y / tile) * tile
    return crs, (float(x0), float(y0), float(x0 + tile), float(y0 + tile))


def clipped(bbox: list[float], search: list[float] | None) -> list[float]:
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


def footprint(geometry: dict[str, Any] | None, bbox: list[float], search: list[float] | None) -> BaseGeometry:
    """An item's WGS84 footprint polygon clipped to the search box: what overlap grouping compares.

    The STAC geometry when it is a valid polygon with area, else the bbox: a bbox alone cannot tell two rotated
    swaths side by side from one place.
    """
    outline = _polygon(geometry) or box(*bbox)
    if search is None:
        return outline
    inside = outline.intersection(box(*search))
    return inside if inside.area > 0 else outline  # outside the search box: unclipped, as `clipped` does


def _polygon(geometry: dict[str, Any] | None) -> BaseGeometry | None:
    """The (multi)polygon of a GeoJSON geometry, None when it is missing, malformed or has no area."""
    if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        return None
    try:
        poly = shapely.make_valid(shape(geometry))
    except (ValueError, TypeError, AttributeError, shapely.errors.ShapelyError):
        return None
    return poly if poly.area > 0 and poly.is_valid else None


def overlap_groups(footprints: list[BaseGeometry]) -> list[int]:
    """Per footprint, the index of its group: footprints sharing area, directly or by a chain, share one (union-find).

    Footprints that only touch along an edge stay apart; groups are numbered by their first member.
    """
    if not footprints:
        return []
    parent = list(range(len(footprints)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = shapely.STRtree(footprints)
    for i, j in zip(*tree.query(footprints, predicate="intersects"), strict=True):
        if i < j and footprints[i].relate_pattern(footprints[j], "T********"):  # interiors meet: shared area
            parent[root(int(j))] = root(int(i))
    firsts: dict[int, int] = {}
    return [firsts.setdefault(root(i), len(firsts)) for i in range(len(footprints))]


def group_square(bboxes: list[list[float]]) -> Square:
    """The union of a group's WGS84 footprint bounds, in metres in the UTM zone of its centre."""
    from rasterio.warp import transform_bounds

    west, south = min(b[0] for b in bboxes), min(b[1] for b in bboxes)
    east, north = max(b[2] for b in bboxes), max(b[3] for b in bboxes)
    crs = utm_crs((west + east) / 2, (south + north) / 2)
    return crs, tuple(float(v) for v in transform_bounds("EPSG:4326", crs, west, south, east, north, densify_pts=21))


def group_names(squares: list[Square], cfg: SourceParams) -> list[str]:
    """Stable AOI names of the group squares: `aoi_name` of each, `_2`, `_3` ... where two share a kilometre."""
    names = [aoi_name(sq, cfg) for sq in squares]
    taken: dict[str, int] = {}
    out = [""] * len(squares)
    for i in sorted(range(len(squares)), key=lambda i: (names[i], squares[i][1])):
        taken[names[i]] = taken.get(names[i], 0) + 1
        out[i] = names[i] if taken[names[i]] == 1 else f"{names[i]}_{taken[names[i]]}"
    return out
