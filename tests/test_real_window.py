"""Windowed real scenes through the pipeline: a STAC API search of one 2 km AOI, download to validate_pairs.

The scenes are BigEarthNet's co-located S2 L2A (12 bands at 10/20/60 m) and S1 (VV, VH in dB) patches of
one place, each mirrored out to a 36 km COG on its own grid (tests/test_window.py), served by the
loopback STAC API in Planetary Computer's shape with the README's params block (URL and bbox changed).
Every band is read by window; the AOI grid is the windowed S2's, and the S1 window must cover it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from httpserver import LoopbackServer
from real_catalog import BEN, PLACES
from test_window import CENTRE, MARGIN_M, SCENE_PX, SQUARE, TILE_M, _item, _scene
from tiny_world import run_stage, tiny_params

from msgfm.sensors import S2_L2A_BANDS


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Every S2 band and VV/VH of place 87_48 as a 36 km COG (20 m and 60 m bands at their own pixel size)."""
    folder = tmp_path_factory.mktemp("scenes")
    s2_patch, s1_patch = PLACES["87_48"]
    for band in S2_L2A_BANDS:
        patch = BEN / "BigEarthNet-v1.0" / s2_patch / f"{s2_patch}_{band}.tif"
        with rasterio.open(patch) as src:
            side = SCENE_PX * 10 // round(src.res[0])
        _scene(patch, folder / f"{band}.tif", side)
    for band in ("VV", "VH"):
        _scene(BEN / "BigEarthNet-S1-v1.0" / s1_patch / f"{s1_patch}_{band}.tif", folder / f"{band.lower()}.tif")
    return folder


def _items(url: str, folder: Path) -> list[dict]:
    """The S2 item (all 12 bands) and the S1 item (`vv`, `vh`) of the scene, hrefs on the loopback server."""
    s2 = _item("S2A_MSIL2A_20170613T101031_R022_T33UUP", "s2", "B04", "", folder / "B04.tif", "2017-06-13T10:10:31Z")
    s2["assets"] = {}
    for band in S2_L2A_BANDS:
        one = _item("x", "s2", band, f"{url}/{band}.tif", folder / f"{band}.tif", "2017-06-13T10:10:31Z")
        s2["assets"] |= one["assets"]
        s2["assets"][band]["eo:bands"] = [{"name": band}]
    s1 = _item("S1A_IW_GRDH_1SDV_20170613T165043_33UUP", "s1", "vv", f"{url}/vv.tif", folder / "vv.tif",
               "2017-06-13T16:50:43Z")  # fmt: skip
    s1["assets"]["vh"] = {**s1["assets"]["vv"], "href": f"{url}/vh.tif"}
    return [s2, s1]


@pytest.mark.slow
def test_a_windowed_aoi_of_real_scenes_goes_from_download_to_validate_pairs(scenes, tmp_path, repo_root):
    (lon,), (lat,) = rasterio.warp.transform("EPSG:32633", "EPSG:4326", [CENTRE[0]], [CENTRE[1]])
    params = tiny_params(repo_root)
    params["source"] = {
        "kind": "stac_api",
        "collections": {"s1": "sentinel-1-rtc", "s2": "sentinel-2-l2a"},
        "bbox": [lon - 0.003, lat - 0.002, lon + 0.003, lat + 0.002],
        "aoi": "ben",
        "aoi_tile_m": TILE_M,
        "assets": {"s1": ["vv", "vh"], "s2": list(S2_L2A_BANDS)},
    }
    params["download"] |= {"window_margin_m": MARGIN_M, "retries": 1, "backoff_s": 0.01}
    with LoopbackServer(scenes) as srv:
        srv.items[:] = _items(srv.url, scenes)
        params["source"]["url"] = f"{srv.url}/api"
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run_stage(tmp_path, "download")
        served = sum(srv.bytes_served.values())
    total = sum(p.stat().st_size for p in scenes.glob("*.tif"))
    print(f"windowed: {served} of {total} bytes ({served / total:.1%}) for 14 assets")
    assert served < 0.1 * total
    for stage in ("validate_raw", "coregister", "validate_coreg", "pair", "validate_pairs"):
        run_stage(tmp_path, stage)
    ledger = pd.read_parquet(tmp_path / "data/raw/acquisitions.parquet")
    assert (ledger["status"] == "ok").all() and set(ledger["aoi"]) == {"ben_32633_420_5322"}
    assert pd.read_parquet(tmp_path / "data/gates/raw.parquet")["accepted"].all()
    rasters = pd.read_parquet(tmp_path / "data/coreg/rasters.parquet")
    assert (rasters["status"] == "ok").all(), rasters["error"].tolist()
    grid = json.loads((tmp_path / "data/coreg/ben_32633_420_5322/grids.json").read_text())["s10"]
    side = int((SQUARE[2] - SQUARE[0] + 2 * MARGIN_M) / 10)
    assert grid["crs"] == "EPSG:32633" and grid["width"] == grid["height"] == side  # the square and margin
    s1 = rasters[rasters["sensor"] == "s1"].iloc[0]
    shift = float(np.hypot(s1["shift_dx_px"], s1["shift_dy_px"]))
    assert shift < 0.5 or (shift == 0 and s1["shift_note"]), s1.to_dict()  # co-located: below 0.5 px or not applied
    manifest = pd.read_parquet(tmp_path / "data/manifest.parquet")
    assert {"train", "val", "test"} <= set(manifest["split"]) and (manifest["sensor"] == "s1").any()
