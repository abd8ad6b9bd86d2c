"""Tiny STAC catalogs of real COGs for the download and raw-gate tests, built with pystac.

Shaped like data/source from `msgfm simulate` (docs/data-layout.md): one collection per sensor,
items `{sensor}_{aoi}_{YYYYMMDD}` with `msgfm:sensor`, `msgfm:aoi`, `proj:code`, and assets with
`file:size` and `file:checksum` (multihash 1220 + SHA-256). Pixels are small and valid by default;
tests then break single items on purpose (`arrays` overrides, edits of the written files).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pystac
from affine import Affine

from msgfm.geo.io import sha256_file, write_cog
from msgfm.sensors import S2_L2A_BANDS, SENTINEL2

CRS = "EPSG:32632"
ORIGIN = (600000.0, 5340000.0)
BBOX = [10.33, 48.17, 10.34, 48.18]
SIZE = 24  # pixels on the 10 m grid; fine grid is 2x


def good_array(sensor: str, key: str, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, float, float | None]:
    """Valid pixels for one asset: (array, pixel size in metres, nodata)."""
    rng = np.random.default_rng(seed)
    if sensor == "s2" and key in S2_L2A_BANDS:
        gsd = SENTINEL2.band(key).gsd_m
        n = max(2, int(size * 10 // gsd))
        return rng.integers(200, 4000, (n, n)).astype(np.uint16), float(gsd), 0
    if key == "cloud_mask":
        return np.zeros((size, size), np.uint8), 10.0, None
    if sensor == "s1":
        return rng.uniform(-22, -4, (size, size)).astype(np.float32), 10.0, None
    if sensor == "rgb":
        return rng.integers(0, 256, (3, 2 * size, 2 * size)).astype(np.uint8), 5.0, None
    if sensor == "dsm":
        return rng.uniform(40, 120, (2 * size, 2 * size)).astype(np.float32), 5.0, -9999.0
    if sensor == "landcover":
        n = size if key == "map" else 2 * size
        return rng.choice(np.array([10, 30, 40, 80], np.uint8), (n, n)), 10.0 if key == "map" else 5.0, 0
    raise ValueError(f"no fixture pixels for {sensor}/{key}")


ASSETS = {
    "s2": [*S2_L2A_BANDS, "cloud_mask"],
    "s1": ["VV", "VH"],
    "rgb": ["image"],
    "dsm": ["dsm"],
    "landcover": ["map", "map_fine"],
}
COLLECTIONS = {
    "s1": "sentinel-1-grd",
    "s2": "sentinel-2-l2a",
    "rgb": "aerial-rgb",
    "dsm": "dsm",
    "landcover": "landcover",
}

ArrayOverride = Callable[[str, str, str], tuple[np.ndarray, float, float | None] | None]
"""(item_id, sensor, asset key) -> replacement (array, gsd, nodata), or None to keep the good pixels."""


def item_id(sensor: str, date: dt.date, aoi: str = "tiny") -> str:
    return f"{sensor}_{aoi}_{date:%Y%m%d}" if sensor != "landcover" else f"landcover_{aoi}"


def make_catalog(
    root: Path,
    items: list[tuple[str, dt.date]],
    *,
    aoi: str = "tiny",
    arrays: ArrayOverride | None = None,
    crs: str | None = CRS,
) -> Path:
    """Write a self-contained catalog with the given (sensor, date) items under `root`; return catalog.json."""
    root = Path(root).resolve()
    catalog = pystac.Catalog("fixture-world", "tiny world for tests")
    collections: dict[str, pystac.Collection] = {}
    for n, (sensor, date) in enumerate(items):
        coll = collections.get(sensor)
        if coll is None:
            extent = pystac.Extent(pystac.SpatialExtent([BBOX]), pystac.TemporalExtent([[None, None]]))
            coll = collections[sensor] = pystac.Collection(COLLECTIONS[sensor], f"{sensor} fixtures", extent)
            catalog.add_child(coll)
        iid = item_id(sensor, date, aoi)
        when = dt.datetime(date.year, date.month, date.day, 10, 30, tzinfo=dt.UTC)
        props = {"msgfm:sensor": sensor, "msgfm:aoi": aoi, "msgfm:biome": "temperate_farmland"}
        if crs:
            props["proj:code"] = crs
        item = pystac.Item(iid, _polygon(BBOX), BBOX, when, props, collection=coll)
        folder = root / COLLECTIONS[sensor] / iid
        for key in ASSETS[sensor]:
            replaced = arrays(iid, sensor, key) if arrays else None
            array, gsd, nodata = (
                replaced if replaced is not None else good_array(sensor, key, seed=100 * n + len(item.assets))
            )
            path = folder / f"{key}.tif"
            write_cog(
                path,
                array,
                crs=crs or "EPSG:4326",
                transform=Affine(gsd, 0, ORIGIN[0], 0, -gsd, ORIGIN[1]),
                nodata=nodata,
            )
            if crs is None:
                strip_crs(path)
            item.add_asset(
                key,
                pystac.Asset(
                    str(path),
                    media_type=pystac.MediaType.COG,
                    roles=["data"],
                    extra_fields={"file:size": path.stat().st_size, "file:checksum": "1220" + sha256_file(path)},
                ),
            )
        coll.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def _polygon(bbox: list[float]) -> dict:
    w, s, e, n = bbox
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def strip_crs(path: Path) -> None:
    """Rewrite a GeoTIFF without any CRS (a 'raster without CRS' fixture)."""
    import rasterio

    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    profile.update(driver="GTiff", crs=None)
    for key in ("blockxsize", "blockysize", "tiled", "compress", "interleave"):
        profile.pop(key, None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def item_json(catalog: Path, iid: str) -> Path:
    """Path of an item's JSON inside a fixture catalog."""
    return next(catalog.parent.rglob(f"{iid}/{iid}.json"))


def edit_item(catalog: Path, iid: str, edit: Callable[[dict], None]) -> None:
    """Apply `edit` to an item's JSON in place."""
    path = item_json(catalog, iid)
    item = json.loads(path.read_text())
    edit(item)
    path.write_text(json.dumps(item))


def rewrite_asset(catalog: Path, iid: str, key: str, data: bytes, *, declare: bool = True) -> None:
    """Replace an asset's bytes; `declare` updates file:size/checksum, else removes them (publisher gave none)."""
    path = item_json(catalog, iid).parent / f"{key}.tif"
    path.write_bytes(data)

    def fix(item: dict) -> None:
        asset = item["assets"][key]
        asset.pop("file:size", None)
        asset.pop("file:checksum", None)
        if declare:
            asset["file:size"] = path.stat().st_size
            asset["file:checksum"] = "1220" + sha256_file(path)

    edit_item(catalog, iid, fix)


def add_copy(catalog: Path, iid: str, new_id: str) -> None:
    """List a second item `new_id` with `iid`'s properties and assets (a duplicated acquisition)."""
    src = item_json(catalog, iid)
    item = json.loads(src.read_text())
    item["id"] = new_id
    for asset in item["assets"].values():
        asset["href"] = f"../{iid}/{Path(asset['href']).name}"
    item["links"] = [link for link in item["links"] if link["rel"] in ("root", "parent", "collection")]
    dst = src.parent.parent / new_id / f"{new_id}.json"
    dst.parent.mkdir()
    dst.write_text(json.dumps(item))
    coll_path = src.parent.parent / "collection.json"
    coll = json.loads(coll_path.read_text())
    coll["links"].append({"rel": "item", "href": f"./{new_id}/{new_id}.json", "type": "application/json"})
    coll_path.write_text(json.dumps(coll))
