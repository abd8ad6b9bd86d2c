"""Hostile names and grids: AOI names that are no folder, same-day acquisitions, grids a bad item could capture.

An AOI name from a catalog becomes a folder of data/coreg, so one that is not its own safe name is refused
at download (a ledger error the raw gate quarantines) and again by coregister (a tampered ledger); nothing
is written outside the data folder. Two acquisitions of one day get two rasters. The S2 grid of an AOI is
the one most acquisitions agree on: a rotated or far-away S2 cannot capture it and is quarantined.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import rasterio
from affine import Affine
from coreg_world import RawWorld
from stac_fixture import edit_item, item_id, make_catalog

from msgfm.config import CoregisterParams, DownloadParams, GatesParams, SourceParams
from msgfm.coreg.aoi_grids import read_grids
from msgfm.coreg.stage import coregister
from msgfm.geo.io import aoi_problem
from msgfm.ingest.download import download, read_ledger
from msgfm.validation.raw import validate_raw

DAYS = [dt.date(2024, 3, d) for d in (10, 11, 12, 13)]


def _coregister(root: Path) -> pd.DataFrame:
    """coregister on the project folder `root` as the DVC stage runs it."""
    return coregister(
        CoregisterParams(), ledger=root / "data/raw/acquisitions.parquet", raw_gate=root / "data/gates/raw.parquet",
        raw_dir=root / "data/raw", out_dir=root / "data/coreg", report=root / "data/reports/coregister.json",
    )  # fmt: skip


def _files_outside(top: Path, inside: Path) -> list[Path]:
    """Every file under `top` that is not under `inside`."""
    return [p for p in top.rglob("*") if p.is_file() and not p.resolve().is_relative_to(inside.resolve())]


def test_hostile_aoi_names_are_refused_and_nothing_is_written_outside_data(tmp_path):
    top = tmp_path / "a" / "b" / "c"  # "../../../X" from data/coreg lands in tmp_path/a/X
    catalog = make_catalog(top / "source", [("s2", d) for d in DAYS])
    absolute = tmp_path / "absolute_aoi"
    hostile = {0: "../../../X", 1: str(absolute), 2: {"nested": "dict"}}
    for n, aoi in hostile.items():
        edit_item(catalog, item_id("s2", DAYS[n]), lambda item, aoi=aoi: item["properties"].update({"msgfm:aoi": aoi}))
    root = top / "project"
    raw = root / "data/raw"
    download(SourceParams(href=str(catalog)), DownloadParams(out_dir=raw), report_path=None, progress=False)
    gates = {"gates_dir": root / "data/gates", "reports_dir": root / "data/reports"}
    validate_raw(raw, SourceParams(href=str(catalog)), GatesParams(), **gates)
    ledger = read_ledger(raw).set_index("id")
    gate = pd.read_parquet(root / "data/gates/raw.parquet").set_index("id")
    for n, aoi in hostile.items():
        iid = item_id("s2", DAYS[n])
        assert ledger.loc[iid, "status"] == "failed"
        assert f"AOI name {str(aoi)!r} is not a safe folder name" in ledger.loc[iid, "error"]
        assert not gate.loc[iid, "accepted"] and "is not a safe folder name" in gate.loc[iid, "reasons"]
    table = _coregister(root).set_index("id")
    good = item_id("s2", DAYS[3])
    assert table.loc[good, "status"] == "ok" and (root / "data/coreg" / table.loc[good, "path"]).is_file()
    assert not [p for p in _files_outside(tmp_path, root / "data") if not p.is_relative_to(top / "source")]
    assert not (tmp_path / "a" / "X").exists() and not absolute.exists()


def test_coregister_refuses_an_aoi_that_is_no_folder_even_from_a_tampered_ledger(tmp_path):
    root = tmp_path / "a" / "b" / "project"
    world = RawWorld(root, size=48, fine_size=48)
    ids = [world.add_s2("2024-05-01"), world.add_s2("2024-05-11"), world.add_s2("2024-06-20")]
    world.finish()
    absolute = tmp_path / "absolute_aoi"
    ledger = pd.read_parquet(root / "data/raw/acquisitions.parquet")
    ledger.loc[ledger["id"] == ids[0], "aoi"] = "../../../X"
    ledger.loc[ledger["id"] == ids[1], "aoi"] = str(absolute)
    ledger.to_parquet(root / "data/raw/acquisitions.parquet", index=False)
    table = _coregister(root).set_index("id")
    assert "AOI name '../../../X' is not a safe folder name" in table.loc[ids[0], "error"]
    assert f"AOI name {str(absolute)!r} is not a safe folder name" in table.loc[ids[1], "error"]
    assert (table.loc[ids[:2], "status"] == "failed").all() and (table.loc[ids[:2], "path"] == "").all()
    assert table.loc[ids[2], "status"] == "ok"
    assert not _files_outside(tmp_path, root / "data") and not absolute.exists()


@pytest.mark.parametrize("aoi", ["farm", "AOI-1.v2"])
def test_safe_aoi_names_are_kept(aoi):
    assert aoi_problem(aoi) == ""


def test_two_acquisitions_of_one_day_get_two_rasters_and_two_sets_of_chips(tmp_path):
    from coreg_world import pair_params

    from msgfm.chips.pairing import pair
    from msgfm.validation.coreg import validate_coreg

    world = RawWorld(tmp_path, size=48, fine_size=48)
    first = world.add_s2("2024-05-01")
    world.add_s2("2024-05-11")
    world.add_landcover()
    second = "s2_farm_20240501_b"  # another tile or processing baseline of the same day
    row = dict(world.rows[0], id=second, datetime=pd.Timestamp("2024-05-01T10:40", tz="UTC"))
    world.rows.append(row)
    world.finish()
    table = _coregister(tmp_path)
    images = table[table["item_id"].isin([first, second]) & (table["kind"] == "image")].set_index("id")
    assert (images["status"] == "ok").all(), images["error"]
    assert images.loc[first, "path"] != images.loc[second, "path"]
    assert all((tmp_path / "data/coreg" / p).is_file() for p in images["path"])
    assert table["path"][table["status"] == "ok"].is_unique
    cfg = CoregisterParams()
    gates = {"gates_dir": tmp_path / "data/gates", "reports_dir": tmp_path / "data/reports/gates"}
    validate_coreg(tmp_path / "data/coreg", cfg, GatesParams(), **gates).raise_if_failed()
    manifest = pair(
        pair_params(tmp_path), coreg_dir=tmp_path / "data/coreg", coreg_gate=tmp_path / "data/gates/coreg.parquet"
    )
    assert manifest["id"].is_unique
    assert set(manifest.loc[manifest["sensor"] == "s2", "source_id"]) == {first, second, "s2_farm_20240511"}


def test_a_second_land_cover_item_of_an_aoi_is_refused_not_overwritten(tmp_path):
    world = RawWorld(tmp_path, size=48, fine_size=48)
    world.add_s2("2024-05-01")
    world.add_landcover()
    world.rows.append(dict(world.rows[-1], id="landcover_farm_v2"))
    world.finish()
    table = _coregister(tmp_path).set_index("id")
    assert table.loc["landcover_farm", "status"] == "ok"
    refused = table[table["item_id"] == "landcover_farm_v2"]
    assert (refused["status"] == "failed").all() and len(refused) == 1
    assert "output name farm/landcover is already taken by 'landcover_farm'" in refused["error"].iloc[0]


def _move_s2(world: RawWorld, iid: str, change: Affine) -> None:
    """Rewrite every band of an S2 acquisition with its transform composed with `change` (pixels kept)."""
    for path in (world.raw / "s2" / iid).glob("*.tif"):
        with rasterio.open(path) as src:
            data, profile = src.read(), src.profile
        profile["transform"] = change(profile["transform"])
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)


def _grid_world(tmp_path: Path) -> tuple[RawWorld, str, list[str]]:
    """An AOI whose earliest S2 is the odd one out, three good S2 after it, an S1 and the land cover."""
    world = RawWorld(tmp_path, size=48, fine_size=48)
    odd = world.add_s2("2024-04-01")
    good = [world.add_s2(d) for d in ("2024-05-01", "2024-05-11", "2024-06-20")]
    world.add_s1("2024-05-02", (0.8, 0.4))
    world.add_landcover()
    return world, odd, good


def test_a_rotated_earliest_s2_does_not_capture_the_grid_and_is_quarantined(tmp_path):
    world, odd, good = _grid_world(tmp_path)
    _move_s2(world, odd, lambda tf: tf @ Affine.rotation(12.0))
    world.finish()
    table = _coregister(tmp_path).set_index("id")
    grid = read_grids(tmp_path / "data/coreg", "farm")["s10"]
    assert grid.transform == world.s2_transform and grid.shape == (48, 48)
    assert table.loc[odd, "status"] == "failed" and "is not north-up" in table.loc[odd, "error"]
    assert f"s2/{odd}/B02.tif" in table.loc[odd, "error"]
    assert (table.loc[[*good, "s1_farm_20240502"], "status"] == "ok").all()


def test_an_s2_500_km_away_is_quarantined_and_the_good_ones_keep_their_grid(tmp_path):
    world, odd, good = _grid_world(tmp_path)
    _move_s2(world, odd, lambda tf: Affine.translation(0.0, -500_000.0) @ tf)
    world.finish()
    table = _coregister(tmp_path).set_index("id")
    assert read_grids(tmp_path / "data/coreg", "farm")["s10"].transform == world.s2_transform
    assert table.loc[odd, "status"] == "failed"
    reason = "footprint is 500 km from the AOI's S2 grid (3 of 4 S2 acquisitions lie on it): not this AOI"
    assert table.loc[odd, "error"] == reason
    assert (table.loc[[*good, "s1_farm_20240502", "landcover_farm"], "status"] == "ok").all()


def _move_rgb(world: RawWorld, iid: str, dy_m: float) -> None:
    """Rewrite an RGB acquisition `dy_m` metres further south (pixels kept)."""
    path = world.raw / "rgb" / iid / "image.tif"
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    profile["transform"] = Affine.translation(0.0, -dy_m) @ profile["transform"]
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def test_an_rgb_far_from_the_s2_grid_does_not_capture_the_fine_grid(tmp_path):
    world = RawWorld(tmp_path, size=48, fine_size=48)
    world.add_s2("2024-05-01")
    far = world.add_rgb("2024-04-15")
    good = world.add_rgb("2024-04-20")
    _move_rgb(world, far, 700_000.0)
    world.finish()
    table = _coregister(tmp_path).set_index("id")
    assert table.loc[good, "status"] == "ok"
    assert table.loc[far, "status"] == "failed" and "all nodata on the fine grid" in table.loc[far, "error"]


def test_an_aoi_whose_only_rgb_is_far_away_has_no_fine_grid_and_says_why(tmp_path):
    world = RawWorld(tmp_path, size=48, fine_size=48)
    s2 = world.add_s2("2024-05-01")
    far = world.add_rgb("2024-04-15")
    _move_rgb(world, far, 700_000.0)
    world.finish()
    table = _coregister(tmp_path).set_index("id")
    assert table.loc[s2, "status"] == "ok"
    assert table.loc[far, "status"] == "failed"
    assert "footprint does not overlap the s10 grid of AOI farm; no fine grid" in table.loc[far, "error"]


def test_an_acquisition_without_a_datetime_is_refused_and_the_rest_go_through(tmp_path):
    world = RawWorld(tmp_path, size=48, fine_size=48)
    good = world.add_s2("2024-05-01")
    undated = world.add_s2("2024-05-11")
    world.rows[-1]["datetime"] = pd.NaT
    world.finish()
    table = _coregister(tmp_path).set_index("id")
    assert table.loc[good, "status"] == "ok"
    assert table.loc[undated, "status"] == "failed"
    assert table.loc[undated, "error"] == "no valid acquisition datetime in the ledger"
