"""Several collections per sensor (issue 13 item 4): L2A and L1C ingested together, each with its band set.

A static catalog shaped like Planetary Computer's with `sentinel-2-l2a` (a real BigEarthNet patch, 12 bands
and SCL), `sentinel-2-l1c` (the real SEN12MS-CR clear and cloudy L1C, split into per-band COG assets with
B10 and no SCL) and `sentinel-1-rtc` (the co-located S1 of both), searched with the README's params.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import yaml
from rasterio.warp import transform_bounds
from real_catalog import COG, build_pc_catalog, pc_params
from tiny_world import run_stage, tiny_params

from msgfm.coreg.clouds import CLOUD
from msgfm.sensors import S2_L2A_BANDS, SENTINEL2

SEN12MS = Path(__file__).resolve().parent / "data" / "sen12ms-cr"
L1C = "sentinel-2-l1c"


def _split_item(stacked: Path, root: Path, collection: str, item_id: str, when: str, names: list[str]) -> dict:
    """A PC-shaped item whose per-band assets are the bands of a real stacked SEN12MS-CR file."""
    folder = root / collection / item_id
    folder.mkdir(parents=True)
    assets = {}
    with rasterio.open(stacked) as src:
        data, profile, crs, bounds = src.read(), src.profile, src.crs, src.bounds
    for i, name in enumerate(names):
        with rasterio.open(folder / f"{name}.tif", "w", **(profile | {"count": 1})) as dst:
            dst.write(data[i : i + 1])
        s1 = collection.startswith("sentinel-1")
        band = {"data_type": str(data.dtype), "unit": "dB"} if s1 else {"data_type": "uint16", "scale": 0.0001}
        assets[name.lower() if s1 else name] = {"href": f"./{name}.tif", "type": COG, "raster:bands": [band]}
    west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds)
    props = {"datetime": when, "proj:epsg": crs.to_epsg()}
    if not collection.startswith("sentinel-1"):
        props |= {"s2:product_type": "S2MSI1C", "s2:processing_baseline": "02.06", "eo:cloud_cover": 30.0}
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
        "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                         [west, north], [west, south]]]},
        "bbox": [west, south, east, north], "properties": props, "assets": assets, "links": [],
    }  # fmt: skip
    (folder / f"{item_id}.json").write_text(json.dumps(item))
    return item


def _link(root: Path, collection: str, item_id: str) -> None:
    path = root / collection / "collection.json"
    doc = json.loads(path.read_text()) if path.is_file() else {
        "type": "Collection", "stac_version": "1.0.0", "id": collection, "description": collection,
        "license": "CC-BY-4.0", "links": [],
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
    }  # fmt: skip
    doc["links"].append({"rel": "item", "href": f"./{item_id}/{item_id}.json"})
    path.write_text(json.dumps(doc))


def _catalog(root: Path) -> tuple[Path, dict[str, str]]:
    """BigEarthNet 87_48 (L2A + S1) and SEN12MS-CR p839 (two L1C + S1); returns catalog.json and the L1C ids."""
    source = root / "data" / "source"
    catalog = build_pc_catalog(source, ["87_48"])
    l2a_dir = next(p for p in (source / "sentinel-2-l2a").iterdir() if p.is_dir())
    with rasterio.open(l2a_dir / "B05.tif") as f:  # PC's L2A items carry SCL: vegetation everywhere here
        profile = f.profile | {"dtype": "uint8", "nodata": 0}
    with rasterio.open(l2a_dir / "SCL.tif", "w", **profile) as f:
        f.write(np.full((1, profile["height"], profile["width"]), 4, np.uint8))
    item_path = l2a_dir / f"{l2a_dir.name}.json"
    item = json.loads(item_path.read_text())
    item["assets"]["SCL"] = {"href": "./SCL.tif", "type": COG}
    item_path.write_text(json.dumps(item))
    ids = {}
    for sub, when in (("s2", "2017-10-01T10:00:00Z"), ("s2_cloudy", "2017-09-26T10:00:00Z")):
        stacked = next(SEN12MS.glob(f"ROIs1970_fall_{sub}/*/*.tif"))
        ids[sub] = f"S2A_MSIL1C_{when[:10].replace('-', '')}_{stacked.stem}"
        _split_item(stacked, source, L1C, ids[sub], when, list(SENTINEL2.band_names))
        _link(source, L1C, ids[sub])
    s1 = next(SEN12MS.glob("ROIs1970_fall_s1/*/*.tif"))
    _split_item(s1, source, "sentinel-1-rtc", f"S1A_IW_GRDH_{s1.stem}", "2017-10-02T10:00:00Z", ["VV", "VH"])
    _link(source, "sentinel-1-rtc", f"S1A_IW_GRDH_{s1.stem}")
    doc = json.loads(catalog.read_text())
    doc["links"].append({"rel": "child", "href": f"./{L1C}/collection.json"})
    catalog.write_text(json.dumps(doc))
    return catalog, ids


def test_l2a_and_l1c_are_ingested_together_each_with_its_band_set(tmp_path, repo_root):
    catalog, l1c = _catalog(tmp_path)
    params = pc_params(tiny_params(repo_root), catalog)
    params["source"]["collections"] = {"s2": ["sentinel-2-l2a", L1C], "s1": "sentinel-1-rtc"}
    params["source"]["assets"]["s2"] = [*SENTINEL2.band_names, "SCL"]  # B10 for L1C, SCL for L2A
    params["coregister"]["reference_dates"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "validate_raw", "coregister"):
        run_stage(tmp_path, stage)
    ledger = pd.read_parquet(tmp_path / "data/raw/acquisitions.parquet").set_index("id")
    assert (ledger["status"] == "ok").all(), ledger["error"].tolist()
    s2 = ledger[ledger["sensor"] == "s2"]
    assert sorted(s2["level"]) == ["L1C", "L1C", "L2A"] and ledger[ledger["sensor"] == "s1"]["level"].isna().all()
    for iid, row in s2.iterrows():
        keys = set(json.loads(row["assets"]))
        level_bands = {*S2_L2A_BANDS, "SCL"} if row["level"] == "L2A" else set(SENTINEL2.band_names)
        assert keys == level_bands, (iid, sorted(keys))  # L1C has B10 and no SCL; L2A the reverse
    gate = pd.read_parquet(tmp_path / "data/gates/raw.parquet")
    assert gate["accepted"].all(), gate["reasons"].tolist()  # no L2A refused for lacking B10, no L1C for SCL
    rasters = pd.read_parquet(tmp_path / "data/coreg/rasters.parquet").set_index("id")
    assert (rasters["status"] == "ok").all(), rasters["error"].tolist()
    cloudy = {}
    for sub, iid in l1c.items():
        with rasterio.open(tmp_path / "data/coreg" / rasters.loc[f"{iid}_cloud", "path"]) as src:
            cloudy[sub] = float((src.read(1) == CLOUD).mean())  # L1C: the spectral test
    assert cloudy["s2"] < 0.01 and cloudy["s2_cloudy"] > 0.2, cloudy
    s1 = rasters[(rasters["sensor"] == "s1") & rasters["item_id"].str.contains("ROIs1970")].iloc[0]
    assert s1["reference_id"] == l1c["s2"]  # the clear L1C date; unmasked, the earlier cloudy one would tie and win
