"""The raw gate on a catalog where good acquisitions sit beside every kind of bad input.

Each bad item must end as a quarantine entry with a readable reason; the good ones must pass
untouched (same bytes as the source). The catalog is downloaded for real (local copies plus a
loopback HTTP server for the unreachable assets) and checked by the real GX suite.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from httpserver import LoopbackServer
from stac_fixture import add_copy, edit_item, good_array, item_json, make_catalog, rewrite_asset, strip_crs
from typer.testing import CliRunner

from msgfm.config import DownloadParams, GatesParams, SourceParams
from msgfm.decisions import accepted_ids
from msgfm.geo.io import sha256_file
from msgfm.ingest.download import download, read_ledger
from msgfm.validation.assets import asset_layout
from msgfm.validation.gates import run_gate
from msgfm.validation.raw import build_raw_table, raw_checks, validate_raw

D = dt.date
GOOD = {
    "s2_tiny_20240315": ("s2", D(2024, 3, 15)),
    "s1_tiny_20240316": ("s1", D(2024, 3, 16)),
    "rgb_tiny_20240401": ("rgb", D(2024, 4, 1)),
    "dsm_tiny_20240401": ("dsm", D(2024, 4, 1)),
    "landcover_tiny": ("landcover", D(2024, 1, 1)),
}
EXPECTED_REASONS = {
    "s2_tiny_20240410": r"^B04: zero-byte file$",
    "s2_tiny_20240420": r"^B05: (pixel data unreadable, file truncated or corrupt|not a readable GeoTIFF)",
    "s1_tiny_20240411": r"^no CRS: VV$",
    "s2_tiny_20240430": r"^missing assets: B03$",
    "s2_tiny_20240510": r"^nodata fraction 1\.000 in B02 above gates\.max_nodata_fraction 0\.5$",
    "s1_tiny_20240511": r"^8 NaN/inf pixels in VV$",
    "s2_tiny_20240520": r"^wrong dtype: B08 is float32 \(expected uint16\)$",
    "s2_tiny_20240530": r"of pixels in B11 outside the sensor range \[0, 15000\] \(min \d+, max 2\d{4}\)$",
    "s1_tiny_20240601": r"^VV: HTTP 404 Not Found for http://127\.0\.0\.1:\d+/gone/VV\.tif",
    "s1_tiny_20240602": r"^VV: gave up after 2 attempts: timed out after 0\.5 s",
    "s1_tiny_20240603": r"^VV: href .*outside\.tif points outside the catalog folder .*; refused",
    "s2_tiny_20240315_copy": r"^duplicate acquisition of s2_tiny_20240315 \(same sensor, AOI and datetime\)$",
    "dsm_tiny_20240604": r"^datetime 'not-a-date' is not parseable$",
    # the file's CRS is not the one the item (proj:code) or the asset (proj:epsg) declares
    "s1_tiny_20240612": r"^VH \(\S*s1_tiny_20240612/VH\.tif\) is in EPSG:32632, but the item's proj:code says "
    r"EPSG:32633; VV \(\S*s1_tiny_20240612/VV\.tif\) is in EPSG:32632, but the item's proj:code says EPSG:32633$",
    "s2_tiny_20240613": r"^B04 \(\S*s2_tiny_20240613/B04\.tif\) is in EPSG:32632, but the asset's proj:epsg says "
    r"EPSG:32631$",
}


def _pixels(iid: str, sensor: str, key: str):
    """Broken pixels for some items (written as valid COGs; the gate must find what is wrong inside)."""
    array, gsd, nodata = good_array(sensor, key, seed=7)
    if (iid, key) == ("s2_tiny_20240510", "B02"):
        return np.zeros_like(array), gsd, nodata
    if (iid, key) == ("s1_tiny_20240511", "VV"):
        array = array.copy()
        array.flat[:5] = np.nan
        array.flat[5:8] = np.inf
        return array, gsd, nodata
    if (iid, key) == ("s2_tiny_20240520", "B08"):
        return array.astype(np.float32), gsd, nodata
    if (iid, key) == ("s2_tiny_20240530", "B11"):
        return (array + 20000).astype(np.uint16), gsd, nodata
    return None


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """Build the mixed catalog, download it, run the gate once; tests read the outcome."""
    root = tmp_path_factory.mktemp("rawgate")
    dates = {iid: spec for iid, spec in GOOD.items()}
    for iid in EXPECTED_REASONS:
        if iid.endswith("_copy"):
            continue
        sensor, day = iid.split("_")[0], iid.split("_")[-1]
        dates[iid] = (sensor, dt.datetime.strptime(day, "%Y%m%d").date())
    catalog = make_catalog(root / "source", list(dates.values()), arrays=_pixels)
    valid = catalog.parent / "sentinel-2-l2a" / "s2_tiny_20240420" / "B05.tif"
    rewrite_asset(catalog, "s2_tiny_20240410", "B04", b"", declare=False)
    rewrite_asset(catalog, "s2_tiny_20240420", "B05", valid.read_bytes()[: valid.stat().st_size // 2], declare=False)
    strip_crs(item_json(catalog, "s1_tiny_20240411").parent / "VV.tif")
    rewrite_asset(
        catalog, "s1_tiny_20240411", "VV", (item_json(catalog, "s1_tiny_20240411").parent / "VV.tif").read_bytes()
    )
    edit_item(catalog, "s2_tiny_20240430", lambda item: item["assets"].pop("B03"))
    edit_item(catalog, "s1_tiny_20240603", lambda item: item["assets"]["VV"].update(href="../../../outside.tif"))
    (root / "outside.tif").write_bytes(valid.read_bytes())
    edit_item(catalog, "dsm_tiny_20240604", lambda item: item["properties"].update(datetime="not-a-date"))
    edit_item(catalog, "s1_tiny_20240612", lambda item: item["properties"].update({"proj:code": "EPSG:32633"}))
    edit_item(catalog, "s2_tiny_20240613", lambda item: item["assets"]["B04"].update({"proj:epsg": 32631}))
    add_copy(catalog, "s2_tiny_20240315", "s2_tiny_20240315_copy")
    stalled = item_json(catalog, "s1_tiny_20240602").parent / "VV.tif"
    with LoopbackServer(catalog.parent, stall_s=2) as srv:
        edit_item(catalog, "s1_tiny_20240601", lambda item: item["assets"]["VV"].update(href=f"{srv.url}/gone/VV.tif"))
        path = "/" + stalled.relative_to(catalog.parent).as_posix()
        edit_item(catalog, "s1_tiny_20240602", lambda item: item["assets"]["VV"].update(href=srv.url + path))
        srv.fail(path, "stall", "stall")
        source = SourceParams(href=str(catalog))
        cfg = DownloadParams(out_dir=root / "raw", retries=1, backoff_s=0.01, timeout_s=0.5, workers=2)
        download(source, cfg, report_path=root / "reports" / "download.json", progress=False)
    gates = GatesParams(min_pass_rate=0.2)
    result = validate_raw(root / "raw", source, gates, gates_dir=root / "gates", reports_dir=root / "reports" / "gates")
    return root, catalog, result


def test_every_bad_item_is_quarantined_with_its_reason(gated):
    root, _, result = gated
    decisions = pd.read_parquet(root / "gates" / "raw.parquet").set_index("id")
    assert list(decisions.columns) == ["accepted", "reasons"]
    assert sorted(decisions.index) == sorted([*GOOD, *EXPECTED_REASONS])
    for iid, pattern in EXPECTED_REASONS.items():
        assert not decisions.loc[iid, "accepted"], iid
        assert re.search(pattern, decisions.loc[iid, "reasons"]), (iid, decisions.loc[iid, "reasons"])
    assert accepted_ids(root / "gates" / "raw.parquet") == set(GOOD)
    assert result.passed  # 5 of 20 accepted is above min_pass_rate 0.2


def test_good_items_pass_untouched(gated):
    root, catalog, _ = gated
    ledger = read_ledger(root / "raw").set_index("id")
    for iid in GOOD:
        assert ledger.loc[iid, "status"] == "ok"
        for key, rel in json.loads(ledger.loc[iid, "assets"]).items():
            assert sha256_file(root / "raw" / rel) == sha256_file(item_json(catalog, iid).parent / f"{key}.tif")
    assert not list((root / "raw").rglob("*.part")) or all(
        "s1_tiny_20240602" in str(p) for p in (root / "raw").rglob("*.part")
    )


def test_report_counts_failures_by_expectation(gated):
    root, _, _ = gated
    report = json.loads((root / "reports" / "gates" / "raw.json").read_text())
    assert (report["rows_checked"], report["passed"], report["failed"]) == (20, 5, 15)
    failures = report["failures_by_expectation"]
    assert failures["downloaded"] == 3 and failures["readable"] == 2 and failures["not_duplicate"] == 1
    assert failures["crs_matches_item"] == 2
    for check in ("crs_present", "assets_present", "nodata_fraction", "finite", "dtype", "value_range"):
        assert failures[check] == 1, check
    assert failures["datetime_parseable"] == 1 and report["dataset_checks"] == {"unique_ids": True}
    assert {q["id"] for q in report["quarantined"]} == set(EXPECTED_REASONS)


def test_low_pass_rate_fails_the_gate_and_the_cli_exits_nonzero(gated, repo_root, monkeypatch):
    root, catalog, _ = gated
    from msgfm.cli import app

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["source"]["href"] = str(catalog)
    params["download"]["out_dir"] = str(root / "raw")
    params["gates"]["min_pass_rate"] = 0.9
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    run = CliRunner().invoke(app, ["validate_raw", "--params", str(root / "params.yaml")])
    assert run.exit_code == 1
    assert "gate raw failed: accepted fraction 0.250 (5/20) is below gates.min_pass_rate 0.9" in run.output
    assert "Traceback" not in run.output
    assert (root / "data" / "reports" / "gates" / "raw.json").is_file()


def test_table_describes_band_layout_from_the_sensor_registry(gated):
    root, catalog, _ = gated
    table = build_raw_table(root / "raw", SourceParams(href=str(catalog)), GatesParams()).set_index("id")
    assert table.loc["s2_tiny_20240315", ["band_count", "expected_band_count"]].tolist() == [12, 12]
    assert table.loc["rgb_tiny_20240401", ["band_count", "dtypes"]].tolist() == [3, "uint8"]
    assert asset_layout("s2", "cloud_mask", ["B02", "cloud_mask"]) is None  # auxiliary asset
    assert asset_layout("s1", "vv", ["vv", "vh"]).dtype == "float32"  # Planetary Computer's lower-case keys
    assert asset_layout("rgb", "image", ["image"]).bands == 3


def test_large_rasters_are_checked_on_a_decimated_read(tmp_path):
    from affine import Affine

    from msgfm.geo.io import write_cog
    from msgfm.validation.assets import open_asset

    array = np.full((256, 256), 1500, np.uint16)
    array[:, :128] = 0  # left half nodata
    write_cog(tmp_path / "B04.tif", array, crs="EPSG:32632", transform=Affine(10, 0, 6e5, 0, -10, 5.3e6), nodata=0)
    layout = asset_layout("s2", "B04", ["B04"])
    full = open_asset(tmp_path / "B04.tif", layout, max_read_px=4096)
    small = open_asset(tmp_path / "B04.tif", layout, max_read_px=64)
    assert full["valid_pixels"] == 256 * 128 and small["valid_pixels"] == 64 * 32
    assert full["nodata_fraction"] == small["nodata_fraction"] == 0.5


def test_every_asset_reason_names_the_asset(gated):
    """Every reason of a check about files names the asset it is about, so the entry says which file to look at."""
    root, catalog, _ = gated
    source = SourceParams(href=str(catalog))
    table = build_raw_table(root / "raw", source, GatesParams())
    # each check's reason tagged with its name, so one item's several reasons can be told apart
    checks = [dataclasses.replace(c, reason=f"{c.reason}<{c.name}>") for c in raw_checks(GatesParams())]
    decisions = run_gate("raw", table, checks, min_pass_rate=0).decisions.set_index("id")
    item_level = {"known_sensor", "datetime_present", "datetime_parseable", "not_duplicate", "unique_ids"}
    sensors = table.set_index("id")["sensor"]
    named = set()
    for iid, reasons in decisions.loc[~decisions["accepted"], "reasons"].items():
        for reason, check in re.findall(r"(?:; )?(.*?)<(\w+)>", reasons):
            if check not in item_level:
                assert any(re.search(rf"\b{k}\b", reason) for k in source.assets[sensors[iid]]), (iid, check, reason)
                named.add(check)
    assert {"readable", "crs_present", "crs_matches_item", "finite", "value_range", "nodata_fraction"} <= named
