"""A Planetary-Computer-shaped static catalog of real rasters from download through validate_pairs (issue 13).

The four real BigEarthNet places (S2 L2A per-band assets, S1 `vv`/`vh` in `sentinel-1-rtc`, tests/real_catalog.py),
the real SEN12MS-CR triplet as a fifth place (its stacked files split into PC-shaped `sentinel-2-l1c` items with
13 bands, clear and cloudy, and a `sentinel-1-rtc` item in dB), and one `sentinel-1-grd` item holding what that
collection holds: uint16 amplitude digital numbers (made from a real S1 patch). Every good acquisition must be
accepted and co-registered, nothing wrongly quarantined, the GRD item refused with its reason, and the manifest a
sound training set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from rasterio.warp import transform_bounds
from real_catalog import COG, PLACES, build_pc_catalog, pc_params
from tiny_world import run_stage, tiny_params

from msgfm.sensors import SENTINEL2

SEN12MS = {  # folder -> (collection, item id, datetime)
    "ROIs1970_fall_s1": ("sentinel-1-rtc", "S1_SEN12MSCR_139_p839", "2017-10-02T10:00:00Z"),
    "ROIs1970_fall_s2": ("sentinel-2-l1c", "S2_MSIL1C_SEN12MSCR_139_p839", "2017-10-01T10:00:00Z"),
    "ROIs1970_fall_s2_cloudy": ("sentinel-2-l1c", "S2_MSIL1C_SEN12MSCR_139_p839_cloudy", "2017-10-11T10:00:00Z"),
}


def _add_grd_item(catalog_dir: Path, place: str) -> str:
    """A sentinel-1-grd item: the real S1 patch of `place` as uint16 amplitude DN, listed in the S1 collection."""
    rtc = catalog_dir / "sentinel-1-rtc"
    src = next(rtc.glob(f"*{place}"))
    grd = rtc / f"{src.name}_GRD"
    shutil.copytree(src, grd)
    (grd / f"{src.name}.json").rename(grd / f"{grd.name}.json")
    item = json.loads((grd / f"{grd.name}.json").read_text())
    item["id"], item["collection"] = grd.name, "sentinel-1-grd"
    for asset in item["assets"].values():
        asset["raster:bands"] = [{"data_type": "uint16", "nodata": 0}]  # GRD: no unit, DN
    (grd / f"{grd.name}.json").write_text(json.dumps(item))
    for tif in grd.glob("*.tif"):
        with rasterio.open(tif) as f:
            db, profile = f.read(), f.profile
        with rasterio.open(tif, "w", **{**profile, "dtype": "uint16", "nodata": 0}) as dst:
            dst.write((np.sqrt(10 ** (db / 10)) * 400).astype("uint16"))  # amplitude DN of the real backscatter
    _link(catalog_dir, "sentinel-1-rtc", grd.name)
    return grd.name


def _add_sen12ms(catalog_dir: Path, test_data: Path) -> list[str]:
    """The SEN12MS-CR triplet as PC-shaped items: one COG a band (S2 L1C B01 ... B12 in the publisher's order)."""
    ids = []
    for folder, (collection, item_id, when) in SEN12MS.items():
        tif = next((test_data / "sen12ms-cr" / folder).glob("*/*.tif"))
        out = catalog_dir / collection / item_id
        out.mkdir(parents=True)
        s1 = collection == "sentinel-1-rtc"
        names = ["vv", "vh"] if s1 else list(SENTINEL2.band_names)
        with rasterio.open(tif) as src:
            data, profile, crs = src.read(), src.profile, src.crs
            west, south, east, north = transform_bounds(crs, "EPSG:4326", *src.bounds)
        assets = {}
        for i, name in enumerate(names):
            with rasterio.open(out / f"{name}.tif", "w", **{**profile, "count": 1}) as dst:
                dst.write(data[i : i + 1])
            unit = {"data_type": "float32", "unit": "dB"} if s1 else {"data_type": "uint16", "scale": 0.0001}
            assets[name] = {"href": f"./{name}.tif", "type": COG, "roles": ["data"], "raster:bands": [unit]}
        props = {"datetime": when, "proj:epsg": crs.to_epsg()}
        props |= {} if s1 else {"s2:product_type": "S2MSI1C", "s2:processing_baseline": "02.05"}
        ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
        item = {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
                "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": [west, south, east, north],
                "properties": props, "assets": assets, "links": []}  # fmt: skip
        (out / f"{item_id}.json").write_text(json.dumps(item))
        _link(catalog_dir, collection, item_id)
        ids.append(item_id)
    return ids


def _link(catalog_dir: Path, collection: str, item_id: str) -> None:
    """List item `item_id` in `collection` (created, and linked from the catalog, when new)."""
    path = catalog_dir / collection / "collection.json"
    if not path.exists():
        extent = {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}}
        doc = {"type": "Collection", "stac_version": "1.0.0", "id": collection, "description": collection,
               "license": "CC-BY-4.0", "links": [], "extent": extent}  # fmt: skip
        path.write_text(json.dumps(doc))
        catalog = json.loads((catalog_dir / "catalog.json").read_text())
        catalog["links"].append({"rel": "child", "href": f"./{collection}/collection.json"})
        (catalog_dir / "catalog.json").write_text(json.dumps(catalog))
    doc = json.loads(path.read_text())
    doc["links"].append({"rel": "item", "href": f"./{item_id}/{item_id}.json"})
    path.write_text(json.dumps(doc))


@pytest.mark.slow
def test_a_real_pc_shaped_catalog_goes_from_download_to_validate_pairs(tmp_path, repo_root, test_data):
    catalog = build_pc_catalog(tmp_path / "data/source", list(PLACES))
    grd = _add_grd_item(catalog.parent, "87_48")
    sen12ms = _add_sen12ms(catalog.parent, test_data)
    collections = {"s1": ["sentinel-1-rtc", "sentinel-1-grd"], "s2": ["sentinel-2-l2a", "sentinel-2-l1c"]}
    assets = {"s1": ["vv", "vh"], "s2": list(SENTINEL2.band_names)}  # the union: L2A items are not asked for B10
    params = pc_params(tiny_params(repo_root), catalog, collections=collections, assets=assets)
    params["pair"].update(block_m=320, buffer_m=0, val_fraction=0.25, test_fraction=0.25)  # 1.2 km patches
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "validate_raw", "coregister", "validate_coreg", "pair", "validate_pairs"):
        run_stage(tmp_path, stage)
    ledger = pd.read_parquet(tmp_path / "data/raw/acquisitions.parquet").set_index("id")
    assert ledger.loc[grd, "status"] == "failed"
    assert "uncalibrated GRD digital numbers, not backscatter" in ledger.loc[grd, "error"]
    good = ledger.drop(index=grd)
    assert len(good) == 11 and (good["status"] == "ok").all(), good["error"].tolist()
    assert set(good.loc[sen12ms[1:], "level"]) == {"L1C"} and len(set(good.loc[sen12ms, "aoi"])) == 1
    raw = pd.read_parquet(tmp_path / "data/gates/raw.parquet").set_index("id")
    assert raw.loc[good.index, "accepted"].all(), raw["reasons"].tolist()
    rasters = pd.read_parquet(tmp_path / "data/coreg/rasters.parquet")
    assert set(rasters["item_id"]) == set(good.index) and (rasters["status"] == "ok").all()
    coreg = pd.read_parquet(tmp_path / "data/gates/coreg.parquet")
    assert coreg["accepted"].all(), coreg["reasons"].tolist()
    assert len(set(good["aoi"])) == 5  # one AOI per place
    manifest = pd.read_parquet(tmp_path / "data/manifest.parquet")
    assert {(sp, se) for sp in ("train", "val", "test") for se in ("s1", "s2")} <= set(
        zip(manifest["split"], manifest["sensor"], strict=True)
    )
    pairs = json.loads((tmp_path / "data/reports/gates/pairs.json").read_text())
    assert pairs["success"] and pairs["splits_missing"] == [] and pairs["paired_fraction"] > 0.9
