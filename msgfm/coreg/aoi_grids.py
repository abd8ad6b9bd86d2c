"""The grids of an AOI: the Sentinel-2 10 m grid and the fine grid, how they are chosen, and grids.json.

Per AOI one CRS, the UTM zone of its Sentinel-2 tile: S2 and S1 go on the grid of the first S2
acquisition with a CRS (without S2, a 10 m grid covering the first RGB acquisition in its UTM zone);
RGB and the DSM go on one fine grid in the same CRS at `coregister.fine_gsd_m`, covering the first RGB
acquisition. The stage records them in `data/coreg/{aoi}/grids.json`; the coreg gate checks every
written raster against them.
"""

from __future__ import annotations

import json
from pathlib import Path

import rasterio

from msgfm.coreg.inputs import Item
from msgfm.geo.grids import Grid, bounds_in, utm_crs
from msgfm.geo.io import atomic_write_json
from msgfm.ingest.download import aoi_problem
from msgfm.ingest.fetch import inside

S10, FINE = "s10", "fine"
GRIDS_NAME = "grids.json"
"""Per AOI, `data/coreg/{aoi}/grids.json` holds the reference grids every raster must lie on."""


def choose_grids(by_sensor: dict[str, list[Item]], fine_gsd_m: float) -> tuple[dict[str, Grid], list[Item]]:
    """The AOI's grids, and the S2 acquisitions to co-register (none before the first one that gave the grid)."""
    grids: dict[str, Grid] = {}
    s2_items = []
    for item in by_sensor.get("s2", []):
        if S10 not in grids:
            grid = _s2_grid(item)
            if grid is None:
                continue
            grids[S10] = grid
        s2_items.append(item)
    for item in by_sensor.get("rgb", []):
        if S10 not in grids:
            grid = _utm_grid(item)
            if grid is not None:
                grids[S10] = grid
        if FINE not in grids and S10 in grids:
            grid = _fine_grid(item, grids[S10].crs, fine_gsd_m)
            if grid is not None:
                grids[FINE] = grid
    return grids, s2_items


def _s2_grid(item: Item) -> Grid | None:
    """The 10 m grid of an S2 acquisition (its B02 or B04 file), None without such a band or a CRS."""
    ref_band = item.assets.get("B02") or item.assets.get("B04")
    if ref_band is None:
        return None
    with rasterio.open(ref_band) as src:
        return None if src.crs is None else Grid.of(src)


def _utm_grid(item: Item) -> Grid | None:
    """Without Sentinel-2, the AOI CRS is the UTM zone of the first raster (the fine grid still works)."""
    path = next(iter(item.assets.values()))
    with rasterio.open(path) as src:
        if src.crs is None:
            return None
        left, bottom, right, top = bounds_in(src, "EPSG:4326")
        crs = utm_crs((left + right) / 2, (bottom + top) / 2)
        return Grid.covering(crs, bounds_in(src, crs), 10.0)


def _fine_grid(item: Item, crs: str, fine_gsd_m: float) -> Grid | None:
    """The fine grid covers an RGB acquisition with a CRS, at `fine_gsd_m` in the AOI CRS."""
    path = item.assets.get("image")
    if path is None:
        return None
    try:
        with rasterio.open(path) as src:
            return None if src.crs is None else Grid.covering(crs, bounds_in(src, crs), fine_gsd_m)
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
