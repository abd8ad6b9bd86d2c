"""The grids of an AOI: the Sentinel-2 10 m grid and the fine grid, how they are chosen, and grids.json.

Per AOI one CRS, the UTM zone of its Sentinel-2 tile (an S2 in degrees, an EPSG:4326 export, is given the
10 m grid of the UTM zone of its centre: AOI grids are always in metres): S2 and S1 go on the S2 grid most acquisitions
agree on (`consensus_s2_grid`: north-up only; a rotated S2, or one far from that grid, is refused with
its reason), without S2 on a 10 m grid covering the first RGB acquisition in its UTM zone; RGB and the
DSM go on one fine grid in the same CRS at `coregister.fine_gsd_m`, covering the first RGB acquisition
that overlaps the 10 m grid. The stage records them in `data/coreg/{aoi}/grids.json`; the coreg gate checks every
written raster against them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import transform_bounds

from msgfm.coreg.inputs import Item
from msgfm.geo.grids import Grid, bounds_in, intersects, utm_crs
from msgfm.geo.io import aoi_problem, atomic_write_json, inside

S10, FINE = "s10", "fine"
GRIDS_NAME = "grids.json"
"""Per AOI, `data/coreg/{aoi}/grids.json` holds the reference grids every raster must lie on."""


def choose_grids(
    by_sensor: dict[str, list[Item]], fine_gsd_m: float
) -> tuple[dict[str, Grid], list[Item], dict[str, str]]:
    """The AOI's grids, the S2 acquisitions to co-register, and why each other S2 acquisition is refused (by id)."""
    grids: dict[str, Grid] = {}
    s2_grid, refused = consensus_s2_grid(by_sensor.get("s2", []))
    if s2_grid is not None:
        grids[S10] = s2_grid
    s2_items = [i for i in by_sensor.get("s2", []) if i.id not in refused]
    for item in by_sensor.get("rgb", []):
        if S10 not in grids:
            grid = _utm_grid(item)
            if grid is not None:
                grids[S10] = grid
        if FINE not in grids and S10 in grids:
            grid = _fine_grid(item, grids[S10], fine_gsd_m)
            if grid is not None:
                grids[FINE] = grid
    if S10 not in grids:
        refused |= {i.id: "no Sentinel-2 grid in this AOI (no readable north-up B02/B04)" for i in s2_items}
    return grids, [i for i in s2_items if i.id not in refused], refused


GridKey = tuple[str, float, float, float, float]
"""What makes two S2 rasters share a grid: CRS, pixel size (x, y) and the origin's offset within a pixel."""


def consensus_s2_grid(items: list[Item]) -> tuple[Grid | None, dict[str, str]]:
    """The S2 grid most acquisitions agree on, and why acquisitions are refused (not north-up, or far away).

    Candidates are the north-up B02 (B04) grids; the winner is the (CRS, pixel size, alignment) most of them
    share (a tie goes to the earliest acquisition's), and its extent is that of the member nearest the members'
    median centre. So a single rotated or misplaced acquisition never captures the AOI's grid; one whose
    footprint misses the grid is refused with its distance.
    """
    refused: dict[str, str] = {}
    candidates: list[tuple[Item, Grid]] = []
    for item in items:
        grid, reason = _s2_grid(item)
        if reason:
            refused[item.id] = reason
        elif grid is not None:
            candidates.append((item, grid))
    if not candidates:
        return None, refused
    groups: dict[GridKey, list[Grid]] = {}
    for _, grid in candidates:
        groups.setdefault(_grid_key(grid), []).append(grid)
    members = max(groups.values(), key=len)  # max keeps the first of equal lengths: the earliest acquisition's key
    centres = np.array([_centre(g.bounds) for g in members])
    median = np.median(centres, axis=0)
    chosen = members[int(np.argmin(np.hypot(*(centres - median).T)))]
    far: dict[str, float] = {}
    for item, grid in candidates:
        footprint = transform_bounds(grid.crs, chosen.crs, *grid.bounds, densify_pts=21)
        if not intersects(footprint, chosen.bounds):
            far[item.id] = float(np.hypot(*np.subtract(_centre(footprint), _centre(chosen.bounds)))) / 1000
    near = f"{len(candidates) - len(far)} of {len(candidates)} S2 acquisitions lie on it"
    refused |= {i: f"footprint is {km:.0f} km from the AOI's S2 grid ({near}): not this AOI" for i, km in far.items()}
    return chosen, refused


def _grid_key(grid: Grid) -> GridKey:
    """CRS, pixel size and sub-pixel origin offset, rounded so float noise does not split a group."""
    t = grid.transform
    return grid.crs, round(t.a, 6), round(t.e, 6), round((t.c / t.a) % 1.0, 3) % 1.0, round((t.f / t.e) % 1.0, 3) % 1.0


def _centre(bounds: tuple[float, float, float, float]) -> tuple[float, float]:
    return (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2


def _s2_grid(item: Item) -> tuple[Grid | None, str]:
    """The 10 m grid of an S2 acquisition (its B02 or B04 file) and '' ; (None, why) when it cannot be one.

    (None, '') without such a band: the acquisition's own task reports the missing bands.
    """
    key = "B02" if "B02" in item.assets else "B04"
    path = item.assets.get(key)
    if path is None:
        return None, ""
    try:
        with rasterio.open(path) as src:
            crs, transform = src.crs, src.transform
            grid = None if crs is None else Grid.of(src)
    except (OSError, rasterio.errors.RasterioError) as e:
        return None, f"{key} ({path}): cannot read: {e}"
    if crs is None:
        return None, f"{key} ({path}): raster has no CRS"
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        return None, (
            f"{key} ({path}) is not north-up (transform {tuple(transform)[:6]} is rotated, sheared or flipped); "
            "an S2 L2A raster always is"
        )
    if not crs.is_projected or crs.linear_units_factor[1] != 1.0:
        grid = _metric_grid(path)  # degrees (EPSG:4326 exports) or feet: the AOI grid is in metres all the same
    return grid, ""


def _metric_grid(path: Path) -> Grid:
    """The 10 m grid in the UTM zone of a raster's centre covering it: an AOI grid is always in metres."""
    with rasterio.open(path) as src:
        left, bottom, right, top = bounds_in(src, "EPSG:4326")
        crs = utm_crs((left + right) / 2, (bottom + top) / 2)
        return Grid.covering(crs, bounds_in(src, crs), 10.0)


def _utm_grid(item: Item) -> Grid | None:
    """Without Sentinel-2, the AOI CRS is the UTM zone of the first raster (the fine grid still works)."""
    path = next(iter(item.assets.values()))
    with rasterio.open(path) as src:
        if src.crs is None:
            return None
    return _metric_grid(path)


def _fine_grid(item: Item, s10: Grid, fine_gsd_m: float) -> Grid | None:
    """The fine grid covers an RGB acquisition with a CRS overlapping the 10 m grid, at `fine_gsd_m` in its CRS."""
    path = item.assets.get("image")
    if path is None:
        return None
    try:
        with rasterio.open(path) as src:
            if src.crs is None or not intersects(bounds_in(src, s10.crs), s10.bounds):
                return None  # a far-away RGB does not capture the fine grid
            return Grid.covering(s10.crs, bounds_in(src, s10.crs), fine_gsd_m)
    except (OSError, rasterio.errors.RasterioError):
        return None  # the acquisition's own task reports it


def write_grids(out_dir: Path, aoi: str, grids: dict[str, Grid]) -> None:
    """Record the AOI's grids in `{out_dir}/{aoi}/grids.json` for the coreg gate."""
    if aoi_problem(aoi) or not inside(Path(out_dir) / aoi, Path(out_dir)):
        raise ValueError(f"AOI {aoi!r}: no folder of {out_dir}; grids not written")
    atomic_write_json(Path(out_dir) / aoi / GRIDS_NAME, {name: g.to_dict() for name, g in grids.items()})


def read_grids(out_dir: Path, aoi: str) -> dict[str, Grid]:
    """The reference grids of an AOI written by the stage ({} when missing, or when `aoi` is no folder of it)."""
    path = Path(out_dir) / aoi / GRIDS_NAME
    if aoi_problem(aoi) or not inside(path, Path(out_dir)) or not path.is_file():
        return {}
    return {name: Grid.from_dict(d) for name, d in json.loads(path.read_text()).items()}
