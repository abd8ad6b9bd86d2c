"""A Planetary-Computer-shaped static catalog of real rasters from download through validate_pairs (issue 13).

The four real BigEarthNet places (S2 L2A per-band assets, S1 `vv`/`vh` in `sentinel-1-rtc`, tests/real_catalog.py)
plus one `sentinel-1-grd` item holding what that collection holds: uint16 amplitude digital numbers (made from a
real S1 patch). Every good acquisition must be accepted and co-registered, nothing wrongly quarantined, the GRD
item refused with its reason, and the manifest a sound training set.
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
from real_catalog import PLACES, build_pc_catalog, pc_params
from tiny_world import run_stage, tiny_params


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
    collection = json.loads((rtc / "collection.json").read_text())
    collection["links"].append({"rel": "item", "href": f"./{grd.name}/{grd.name}.json"})
    (rtc / "collection.json").write_text(json.dumps(collection))
    return grd.name


@pytest.mark.slow
def test_a_real_pc_shaped_catalog_goes_from_download_to_validate_pairs(tmp_path, repo_root):
    catalog = build_pc_catalog(tmp_path / "data/source", list(PLACES))
    grd = _add_grd_item(catalog.parent, "87_48")
    params = pc_params(
        tiny_params(repo_root),
        catalog,
        collections={"s1": ["sentinel-1-rtc", "sentinel-1-grd"], "s2": "sentinel-2-l2a"},
    )
    params["pair"].update(block_m=320, buffer_m=0, val_fraction=0.25, test_fraction=0.25)  # 1.2 km patches
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "validate_raw", "coregister", "validate_coreg", "pair", "validate_pairs"):
        run_stage(tmp_path, stage)
    ledger = pd.read_parquet(tmp_path / "data/raw/acquisitions.parquet").set_index("id")
    assert ledger.loc[grd, "status"] == "failed"
    assert "uncalibrated GRD digital numbers, not backscatter" in ledger.loc[grd, "error"]
    good = ledger.drop(index=grd)
    assert len(good) == 8 and (good["status"] == "ok").all(), good["error"].tolist()
    raw = pd.read_parquet(tmp_path / "data/gates/raw.parquet").set_index("id")
    assert raw.loc[good.index, "accepted"].all(), raw["reasons"].tolist()
    rasters = pd.read_parquet(tmp_path / "data/coreg/rasters.parquet")
    assert set(rasters["item_id"]) == set(good.index) and (rasters["status"] == "ok").all()
    coreg = pd.read_parquet(tmp_path / "data/gates/coreg.parquet")
    assert coreg["accepted"].all(), coreg["reasons"].tolist()
    assert len(set(good["aoi"])) == 4  # one AOI per place
    manifest = pd.read_parquet(tmp_path / "data/manifest.parquet")
    assert {(sp, se) for sp in ("train", "val", "test") for se in ("s1", "s2")} <= set(
        zip(manifest["split"], manifest["sensor"], strict=True)
    )
    pairs = json.loads((tmp_path / "data/reports/gates/pairs.json").read_text())
    assert pairs["success"] and pairs["splits_missing"] == [] and pairs["paired_fraction"] > 0.9
