"""The simulated world's static STAC catalog: items with projection, file and eo fields, collections, checks.

Shaped like the real collections (docs/data-layout.md); written atomically and only when the bytes change,
so a resumed `msgfm simulate` leaves finished JSON untouched.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pystac
from pystac.extensions.eo import EOExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.stac_io import DefaultStacIO
from rasterio.warp import transform_bounds

from msgfm.geo.io import atomic_write_bytes, sha256_file
from msgfm.sensors import S2_L2A_BANDS

if TYPE_CHECKING:
    from msgfm.sim.simulate import Acquisition

COLLECTIONS = {
    "s2": ("sentinel-2-l2a", "Simulated Sentinel-2 L2A surface reflectance, 12 bands at native 10/20/60 m"),
    "s1": ("sentinel-1-grd", "Simulated Sentinel-1 IW GRD backscatter, VV and VH in dB, 10 m"),
    "rgb": ("aerial-rgb", "Simulated aerial RGB orthophotos, about 1 m, uint8, Web Mercator"),
    "dsm": ("dsm", "Simulated digital surface models (terrain + buildings + trees), about 1 m, float32"),
    "landcover": ("landcover", "Simulated ESA WorldCover-style land cover (the label source), 10 m and fine grid"),
}
LICENSE = "CC0-1.0"


# -- items and collections -------------------------------------------------------------------------


class KeepUnchangedStacIO(DefaultStacIO):
    """Writes STAC JSON atomically, and not at all when the file already holds the same bytes."""

    def write_text_to_href(self, href: str, txt: str) -> None:
        path = Path(href)
        data = txt.encode("utf-8")
        if path.is_file() and path.read_bytes() == data:
            return
        atomic_write_bytes(path, data)


def _asset_files(sensor: str) -> list[str]:
    return {
        "s2": [*S2_L2A_BANDS, "cloud_mask"],
        "s1": ["VV", "VH"],
        "rgb": ["image"],
        "dsm": ["dsm"],
        "landcover": ["map", "map_fine"],
    }[sensor]


def make_item(acq: Acquisition, folder: Path) -> pystac.Item:
    """A STAC item for the files in `folder`, with projection, file (size, checksum) and eo fields."""
    import rasterio

    keys = _asset_files(acq.sensor)
    primary = "B02" if acq.sensor == "s2" else keys[0]  # the item-level grid: S2's 10 m grid
    with rasterio.open(folder / f"{primary}.tif") as src:
        crs, transform, shape, bounds = src.crs, src.transform, src.shape, src.bounds
    wb = transform_bounds(crs, "EPSG:4326", *bounds)
    bbox = [round(v, 7) for v in wb]
    geometry = {
        "type": "Polygon",
        "coordinates": [[[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]], [bbox[0], bbox[3]],
                         [bbox[0], bbox[1]]]],
    }  # fmt: skip
    when = dt.datetime.combine(acq.date, dt.time(10, 30) if acq.sensor != "s1" else dt.time(17, 20), dt.UTC)
    item = pystac.Item(
        id=acq.item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=when,
        properties={"msgfm:sensor": acq.sensor, "msgfm:aoi": acq.aoi.name, "msgfm:biome": acq.aoi.biome},
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code, proj.shape, proj.transform = crs.to_string(), list(shape), list(transform)[:6]
    FileExtension.add_to(item)
    for key in keys:
        path = folder / f"{key}.tif"
        asset = pystac.Asset(href=f"./{key}.tif", media_type=pystac.MediaType.COG, roles=["data"], title=key)
        item.add_asset(key, asset)
        with rasterio.open(path) as src:
            if src.transform != transform:
                ap = ProjectionExtension.ext(asset)
                ap.shape, ap.transform = list(src.shape), list(src.transform)[:6]
        fe = FileExtension.ext(asset)
        fe.size = path.stat().st_size
        fe.checksum = "1220" + sha256_file(path)
    if acq.sensor == "s2":
        with rasterio.open(folder / "cloud_mask.tif") as src:
            cloud_cover = round(float((src.read(1) == 1).mean() * 100), 2)
        EOExtension.ext(item, add_if_missing=True).cloud_cover = cloud_cover
    return item


def items_done(folder: Path, sensor: str) -> bool:
    """All asset files of an item exist (writes are atomic, so an existing file is complete)."""
    return all((folder / f"{k}.tif").is_file() for k in _asset_files(sensor))


def _collection(sensor: str, items: list[pystac.Item]) -> pystac.Collection:
    cid, description = COLLECTIONS[sensor]
    bboxes = np.array([i.bbox for i in items])
    times = [i.datetime for i in items]
    extent = pystac.Extent(
        pystac.SpatialExtent([[*bboxes[:, :2].min(0).tolist(), *bboxes[:, 2:].max(0).tolist()]]),
        pystac.TemporalExtent([[min(times), max(times)]]),
    )
    col = pystac.Collection(id=cid, description=description, extent=extent, license=LICENSE, title=cid)
    col.add_items(items)
    return col


def publish_catalog(out: Path, items: dict[str, list[pystac.Item]]) -> pystac.Catalog:
    """Save the self-contained catalog of every sensor's collection under `out`."""
    catalog = pystac.Catalog(
        id="msgfm-simulated-world",
        description="msgfm's embedded simulated multisensor world (Sentinel-1, Sentinel-2, aerial RGB, DSM, "
        "land cover); see docs/simulator.md",
        title="msgfm simulated world",
    )
    for sensor, its in items.items():
        if its:
            catalog.add_child(_collection(sensor, its))
    catalog.normalize_hrefs(str(out.resolve()))
    catalog.save(pystac.CatalogType.SELF_CONTAINED, stac_io=KeepUnchangedStacIO())
    return catalog


# -- validation --------------------------------------------------------------------------------


def validate_catalog(root: Path) -> int:
    """Validate every catalog, collection and item under `root` against the core STAC JSON schemas.

    pystac ships the core STAC 1.1 schemas; extension schemas (projection, file, eo) are fetched from the
    network, which the pipeline must not need, so only the core is checked here. Returns the number of
    objects validated; raises pystac.STACValidationError on the first invalid one.
    """
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    validator = JsonSchemaSTACValidator()
    catalog = pystac.Catalog.from_file(str(Path(root) / "catalog.json"))
    n = 0
    for obj in [catalog, *catalog.get_all_collections(), *catalog.get_items(recursive=True)]:
        d = obj.to_dict(include_self_link=False)
        validator.validate_core(d, pystac.STACObjectType(d["type"] if d["type"] != "Feature" else "Feature"),
                                d["stac_version"], obj.get_self_href())  # fmt: skip
        n += 1
    return n
