"""Static STAC catalogs shaped like Planetary Computer's, built from the real BigEarthNet v1.0 samples.

The rasters are the real patches of tests/data/bigearthnet-v1 (copied unchanged, one GeoTIFF a band);
the item JSON follows Planetary Computer's `sentinel-2-l2a` and `sentinel-1-rtc` items: per-band
assets keyed `B01` ... `B12` and lower-case `vv`/`vh`, `proj:epsg`, `eo:cloud_cover`, `eo:bands` and
`raster:bands`, a collection per sensor, and no `msgfm:*` property. BigEarthNet's S1 is backscatter in
dB (not RTC's linear power), so the S1 assets declare `raster:bands` unit `dB`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import rasterio
from rasterio.warp import transform_bounds

from msgfm.sensors import S2_COMMON_NAMES, S2_L2A_BANDS

BEN = Path(__file__).resolve().parent / "data" / "bigearthnet-v1"
PLACES = {  # BigEarthNet patch suffix -> (S2 patch folder, S1 patch folder); four places in three UTM zones
    "87_48": ("S2A_MSIL2A_20170613T101031_87_48", "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"),
    "36_85": ("S2A_MSIL2A_20170617T113321_36_85", "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85"),
    "4_55": ("S2A_MSIL2A_20170617T113321_4_55", "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55"),
    "69_24": ("S2B_MSIL2A_20170924T93020_69_24", "S1A_IW_GRDH_1SDV_20170925T043256_35VPK_69_24"),
}
COLLECTIONS = {"s2": "sentinel-2-l2a", "s1": "sentinel-1-rtc"}
COMMON = {band: name for name, band in S2_COMMON_NAMES.items()}
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def pc_item(patch_dir: Path, sensor: str, keys: dict[str, str], when: str, root: Path) -> dict:
    """A PC-shaped item for one BigEarthNet patch; `keys` maps the item's asset key to the patch's band file."""
    item_id = patch_dir.name
    folder = root / COLLECTIONS[sensor] / item_id
    folder.mkdir(parents=True, exist_ok=True)
    assets = {}
    for key, band in keys.items():
        src_path = patch_dir / f"{patch_dir.name}_{band}.tif"
        shutil.copyfile(src_path, folder / f"{band}.tif")
        with rasterio.open(src_path) as src:
            crs, bounds, shape, tf = src.crs, src.bounds, src.shape, src.transform
        asset = {"href": f"./{band}.tif", "type": COG, "roles": ["data"], "proj:shape": list(shape)}
        asset["proj:transform"] = list(tf)[:6]
        if sensor == "s2":
            asset["eo:bands"] = [{"name": band, "common_name": COMMON.get(band, band.lower())}]
            asset["raster:bands"] = [{"data_type": "uint16", "nodata": 0, "scale": 0.0001, "unit": "reflectance"}]
        else:
            asset["raster:bands"] = [{"data_type": "float32", "nodata": -32768, "unit": "dB"}]
        assets[key] = asset
    west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds)
    props = {
        "datetime": when,
        "proj:epsg": crs.to_epsg(),
        "platform": "Sentinel-2A" if sensor == "s2" else "SENTINEL-1A",
    }
    if sensor == "s2":
        props |= {"eo:cloud_cover": 0.0, "s2:processing_baseline": "02.05", "s2:product_type": "S2MSI2A"}
    else:
        props |= {"sar:polarizations": ["VV", "VH"], "sar:instrument_mode": "IW", "sar:product_type": "GRD"}
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": COLLECTIONS[sensor],
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
        },
        "bbox": [west, south, east, north],
        "properties": props,
        "assets": assets,
        "links": [{"rel": "collection", "href": "../collection.json"}],
    }
    (folder / f"{item_id}.json").write_text(json.dumps(item, indent=1))
    return item


def build_pc_catalog(root: Path, places: list[str] | None = None, *, s2_keys: str = "pc") -> Path:
    """Write a static catalog of the chosen BigEarthNet places under `root`; returns catalog.json.

    `s2_keys`: "pc" keys the S2 assets `B01` ... like Planetary Computer, "earth_search" by common name
    (`blue`, `nir08`, ...) like Earth Search. S1 assets are always `vv`, `vh`.
    """
    items: dict[str, list[str]] = {"s2": [], "s1": []}
    for place in places or list(PLACES):
        s2_patch, s1_patch = PLACES[place]
        s2_dir, s1_dir = BEN / "BigEarthNet-v1.0" / s2_patch, BEN / "BigEarthNet-S1-v1.0" / s1_patch
        s2_when = json.loads((s2_dir / f"{s2_patch}_labels_metadata.json").read_text())["acquisition_date"]
        s1_when = json.loads((s1_dir / f"{s1_patch}_labels_metadata.json").read_text())["acquisition_time"]
        bands = {(COMMON[b] if s2_keys == "earth_search" else b): b for b in S2_L2A_BANDS}
        pc_item(s2_dir, "s2", bands, s2_when.replace(" ", "T") + "Z", root)
        pc_item(s1_dir, "s1", {"vv": "VV", "vh": "VH"}, s1_when + "Z", root)
        items["s2"].append(s2_patch)
        items["s1"].append(s1_patch)
    links = []
    for sensor, ids in items.items():
        coll = COLLECTIONS[sensor]
        doc = {
            "type": "Collection",
            "stac_version": "1.0.0",
            "id": coll,
            "description": f"{coll} items over BigEarthNet v1.0 sample patches",
            "license": "CDLA-Permissive-1.0",
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
            "links": [{"rel": "item", "href": f"./{i}/{i}.json"} for i in ids],
        }
        (root / coll / "collection.json").write_text(json.dumps(doc, indent=1))
        links.append({"rel": "child", "href": f"./{coll}/collection.json"})
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "ben-pc", "description": "PC-shaped", "links": links}
    (root / "catalog.json").write_text(json.dumps(catalog, indent=1))
    return root / "catalog.json"


def pc_params(base: dict, catalog: Path, **source: object) -> dict:
    """`base` params with a static source over a PC-shaped catalog: README's asset keys, no cloud_mask."""
    params = json.loads(json.dumps(base))
    params["source"] |= {
        "kind": "static",
        "href": str(catalog),
        "collections": dict(COLLECTIONS),
        "assets": {"s1": ["vv", "vh"], "s2": list(S2_L2A_BANDS)},
        **source,
    }
    return params
