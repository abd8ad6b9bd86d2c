"""Units and scaling from metadata on real rasters (issue 13 item 5): S2 scale/offset, baseline 04.00, float S2, GRD DN.

The real BigEarthNet patches (baseline 02.xx, reflectance x 10000) are rewritten the way later products and
other publishers store the same values: +1000 (baseline 04.00 and later, Planetary Computer declares no
offset), +1000 with Earth Search's declared `offset: -0.1`, float reflectance 0-1 (Earth Engine float
exports). Download must land the original values every time; what cannot convert losslessly is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from real_catalog import build_pc_catalog, pc_params
from tiny_world import run_stage, tiny_params

from msgfm.ingest.records import s2_scaling

PLACE = "87_48"


def _project(root: Path, repo_root: Path) -> Path:
    catalog = build_pc_catalog(root / "data" / "source", [PLACE])
    (root / "params.yaml").write_text(yaml.safe_dump(pc_params(tiny_params(repo_root), catalog), sort_keys=False))
    return root


def _item_dir(root: Path, collection: str) -> Path:
    return next(p for p in (root / "data/source" / collection).iterdir() if p.is_dir())


def _rewrite(folder: Path, change: Callable[[np.ndarray], np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Rewrite every band file of an item folder as change(values) in `dtype`; returns the original values."""
    original = {}
    for path in sorted(folder.glob("*.tif")):
        with rasterio.open(path) as src:
            data, profile = src.read(), src.profile
        original[path.stem] = data[0]
        with rasterio.open(path, "w", **(profile | {"dtype": dtype})) as dst:
            dst.write(change(data).astype(dtype))
    return original


def _edit_item(folder: Path, edit: Callable[[dict], None]) -> None:
    path = folder / f"{folder.name}.json"
    item = json.loads(path.read_text())
    edit(item)
    path.write_text(json.dumps(item))


def _landed(root: Path, sensor: str) -> tuple[pd.Series, dict[str, np.ndarray]]:
    ledger = pd.read_parquet(root / "data/raw/acquisitions.parquet").set_index("sensor")
    row = ledger.loc[sensor]
    values = {}
    for key, rel in json.loads(row["assets"]).items():
        with rasterio.open(root / "data/raw" / rel) as src:
            assert src.dtypes[0] == "uint16" or sensor != "s2"
            values[key] = src.read(1)
    return row, values


def _baseline(baseline: str, **band: float) -> Callable[[dict], None]:
    def edit(item: dict) -> None:
        item["properties"]["s2:processing_baseline"] = baseline
        for asset in item["assets"].values():
            asset["raster:bands"][0] = {k: v for k, v in asset["raster:bands"][0].items() if k != "offset"} | band

    return edit


@pytest.mark.parametrize(
    ("publisher", "edit"),
    [
        ("planetary_computer", _baseline("05.09")),  # +1000 in the pixels, no offset declared
        ("earth_search", _baseline("05.09", scale=0.0001, offset=-0.1)),  # the offset declared
    ],
)
def test_baseline_04_offset_is_harmonised(tmp_path, repo_root, publisher, edit):
    root = _project(tmp_path, repo_root)
    folder = _item_dir(root, "sentinel-2-l2a")
    original = _rewrite(folder, lambda d: np.where(d > 0, d.astype(np.int32) + 1000, 0), "uint16")
    _edit_item(folder, edit)
    run_stage(root, "download")
    run_stage(root, "validate_raw")
    row, landed = _landed(root, "s2")
    assert row["status"] == "ok", row["error"]
    for band, values in original.items():
        np.testing.assert_array_equal(landed[band], values, err_msg=f"{publisher} {band}")
    stored = json.loads((root / "data/raw" / row["item_path"]).read_text())
    assert stored["assets"]["B04"]["raster:bands"][0]["offset"] == 0 and "msgfm:converted" in stored["assets"]["B04"]
    assert pd.read_parquet(root / "data/gates/raw.parquet")["accepted"].all()


def test_old_baseline_keeps_its_values(tmp_path, repo_root):
    """Baseline 02.05 (BigEarthNet's own) has no offset: the same +1000 pixels stay +1000, nothing is rewritten."""
    root = _project(tmp_path, repo_root)
    folder = _item_dir(root, "sentinel-2-l2a")
    original = _rewrite(folder, lambda d: np.where(d > 0, d.astype(np.int32) + 1000, 0), "uint16")
    run_stage(root, "download")
    _, landed = _landed(root, "s2")
    assert all((landed[b][v > 0] == v[v > 0] + 1000).all() for b, v in original.items())


def test_float_reflectance_is_accepted_when_lossless(tmp_path, repo_root):
    """An Earth Engine-style float32 export of reflectance 0-1 lands as the original uint16 values."""
    root = _project(tmp_path, repo_root)
    folder = _item_dir(root, "sentinel-2-l2a")
    original = _rewrite(folder, lambda d: d / 10000.0, "float32")
    _edit_item(folder, lambda item: [a.pop("raster:bands") for a in item["assets"].values()])
    for stage in ("download", "validate_raw", "coregister"):
        run_stage(root, stage)
    row, landed = _landed(root, "s2")
    assert row["status"] == "ok", row["error"]
    for band, values in original.items():
        np.testing.assert_array_equal(landed[band], values)
    rasters = pd.read_parquet(root / "data/coreg/rasters.parquet")
    assert (rasters["status"] == "ok").all(), rasters["error"].tolist()


def test_float_s2_that_is_not_reflectance_steps_is_refused(tmp_path, repo_root):
    """Float values off the 1e-4 reflectance steps (another unit, resampled data) would be changed: refused."""
    root = _project(tmp_path, repo_root)
    folder = _item_dir(root, "sentinel-2-l2a")
    _rewrite(folder, lambda d: d / 10000.0 + 0.00003, "float32")
    _edit_item(folder, lambda item: [a.pop("raster:bands") for a in item["assets"].values()])
    run_stage(root, "download")
    row, _ = _landed(root, "s2")
    assert row["status"] == "failed"
    assert "are not whole steps of reflectance x 10000" in row["error"] and "not converted losslessly" in row["error"]


def test_uncalibrated_s1_grd_digital_numbers_are_refused_with_the_reason(tmp_path, repo_root):
    """Planetary Computer's sentinel-1-grd holds uint16 amplitude DN: refused, saying it is not backscatter."""
    root = _project(tmp_path, repo_root)
    folder = _item_dir(root, "sentinel-1-rtc")
    _rewrite(folder, lambda d: np.sqrt(10 ** (d / 10)) * 400, "uint16")  # amplitude DN of the real backscatter
    run_stage(root, "download")
    ledger = pd.read_parquet(root / "data/raw/acquisitions.parquet").set_index("sensor")
    error = ledger.loc["s1", "error"]
    assert ledger.loc["s1", "status"] == "failed" and "uncalibrated GRD digital numbers, not backscatter" in error
    assert not list((root / "data/raw/s1").rglob("VV.tif"))  # nothing refused lands under its final name
    assert ledger.loc["s2", "status"] == "ok"


def test_s2_scaling_reads_scale_offset_and_baseline():
    scaled = {"raster:bands": [{"scale": 0.0001}]}
    assert s2_scaling(scaled, {"s2:processing_baseline": "02.05"}) == (1.0, 0.0)
    assert s2_scaling(scaled, {"s2:processing_baseline": "04.00"}) == (1.0, -1000.0)
    assert s2_scaling({}, {"s2:processing_baseline": "05.10"}) == (None, -1000.0)
    harmonised = {"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True}
    assert s2_scaling(scaled, harmonised) == (1.0, 0.0)
    assert s2_scaling({"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}, {}) == (1.0, -1000.0)
    assert s2_scaling({"raster:bands": [{"scale": 1.0}]}, {}) == (10000.0, 0.0)  # float reflectance declared
