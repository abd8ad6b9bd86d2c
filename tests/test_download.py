"""Download: layout and ledger, incremental runs, untrusted hrefs, and network faults on a loopback server."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pandas as pd
import pystac
import pytest
from httpserver import LoopbackServer
from stac_fixture import edit_item, item_json, make_catalog

from msgfm.config import DownloadParams, SourceParams
from msgfm.geo.io import sha256_file
from msgfm.ingest.download import LEDGER_COLUMNS, download, read_ledger, safe_name

ITEMS = [("s2", dt.date(2024, 3, 15)), ("s1", dt.date(2024, 3, 16)), ("rgb", dt.date(2024, 4, 1))]
FAST = {"retries": 2, "backoff_s": 0.01, "timeout_s": 0.5, "workers": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("world") / "source", ITEMS)


def _run(source: SourceParams, raw: Path, **kw):
    cfg = DownloadParams(out_dir=raw, **{**FAST, **kw})
    return download(source, cfg, report_path=raw.parent / "reports" / "download.json", progress=False)


def _files(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(folder).as_posix(): (sha256_file(p), p.stat().st_mtime_ns) for p in folder.rglob("*.tif")}


def test_layout_ledger_and_item_json(world, tmp_path):
    raw = tmp_path / "raw"
    summary = _run(SourceParams(href=str(world)), raw)
    assert (summary.items, summary.fetched, summary.failed) == (3, 3, 0)
    ledger = read_ledger(raw)
    assert list(ledger.columns) == LEDGER_COLUMNS
    assert ledger["id"].tolist() == ["rgb_tiny_20240401", "s1_tiny_20240316", "s2_tiny_20240315"]
    assert (ledger["status"] == "ok").all() and (ledger["error"] == "").all()
    assert str(ledger["datetime"].dtype) == "datetime64[us, UTC]"
    assert ledger["datetime"].iloc[1] == pd.Timestamp("2024-03-16T10:30:00Z")
    assert list(ledger["bbox"].iloc[0]) == [10.33, 48.17, 10.34, 48.18] and ledger["crs"].iloc[0] == "EPSG:32632"
    s1_assets = json.loads(ledger["assets"].iloc[1])
    assert s1_assets == {"VH": "s1/s1_tiny_20240316/VH.tif", "VV": "s1/s1_tiny_20240316/VV.tif"}
    for key, rel in s1_assets.items():  # byte-identical copies of the source assets
        assert sha256_file(raw / rel) == sha256_file(item_json(world, "s1_tiny_20240316").parent / f"{key}.tif")
    item = pystac.Item.from_file(str(raw / ledger["item_path"].iloc[1]))
    assert Path(item.assets["VV"].get_absolute_href()) == (raw / s1_assets["VV"]).resolve()
    assert len(list((raw / "s2" / "s2_tiny_20240315").glob("*.tif"))) == 13
    report = json.loads((tmp_path / "reports" / "download.json").read_text())
    assert report["fetched"] == 3 and report["bytes"] == sum(p.stat().st_size for p in raw.rglob("*.tif"))


def test_an_item_the_publisher_changed_is_fetched_again(world, tmp_path):
    cat = tmp_path / "source"
    shutil.copytree(world.parent, cat)
    raw = tmp_path / "raw"
    assert _run(SourceParams(href=str(cat / "catalog.json")), raw).fetched == 3
    before = _files(raw)

    # the publisher re-renders VV of one item (new bytes, new file:checksum and size); the rest is unchanged
    vv = item_json(cat / "catalog.json", "s1_tiny_20240316").parent / "VV.tif"
    vv.write_bytes((vv.parent / "VH.tif").read_bytes())

    def declare(item: dict) -> None:
        item["assets"]["VV"]["file:checksum"] = "1220" + sha256_file(vv)
        item["assets"]["VV"]["file:size"] = vv.stat().st_size

    edit_item(cat / "catalog.json", "s1_tiny_20240316", declare)
    second = _run(SourceParams(href=str(cat / "catalog.json")), raw)
    assert (second.skipped, second.fetched, second.failed) == (2, 1, 0)
    after = _files(raw)
    assert after["s1/s1_tiny_20240316/VV.tif"][0] == sha256_file(vv)
    assert after["s1/s1_tiny_20240316/VH.tif"] == before["s1/s1_tiny_20240316/VH.tif"]  # verified, not rewritten
    assert {k: v for k, v in after.items() if not k.startswith("s1/")} == {
        k: v for k, v in before.items() if not k.startswith("s1/")
    }
    assert _run(SourceParams(href=str(cat / "catalog.json")), raw).fetched == 0


def test_second_run_is_incremental_and_retries_failures(world, tmp_path):
    cat = tmp_path / "source"
    shutil.copytree(world.parent, cat)
    broken = item_json(cat / "catalog.json", "s1_tiny_20240316").parent / "VV.tif"
    kept = broken.read_bytes()
    broken.unlink()
    raw = tmp_path / "raw"
    first = _run(SourceParams(href=str(cat / "catalog.json")), raw)
    assert (first.fetched, first.failed) == (2, 1)
    row = read_ledger(raw).set_index("id").loc["s1_tiny_20240316"]
    assert row["status"] == "failed" and "VV: file not found" in row["error"]
    before = _files(raw)

    broken.write_bytes(kept)  # the publisher fixes the asset: the next run fetches only that item
    second = _run(SourceParams(href=str(cat / "catalog.json")), raw)
    assert (second.skipped, second.fetched, second.failed, second.bytes) == (2, 1, 0, len(kept))  # VH was kept
    after = _files(raw)
    assert {k: v for k, v in after.items() if k in before} == before  # untouched: same bytes, same mtime
    assert (read_ledger(raw)["status"] == "ok").all()
    assert _run(SourceParams(href=str(cat / "catalog.json")), raw).fetched == 0
    assert _files(raw) == after


def test_untrusted_ids_keys_and_hrefs_never_write_outside_raw(world, tmp_path):
    cat = tmp_path / "nested" / "source"
    shutil.copytree(world.parent, cat)
    secret = tmp_path / "nested" / "secret.tif"
    secret.write_bytes(b"not yours")
    path = item_json(cat / "catalog.json", "s1_tiny_20240316")
    item = json.loads(path.read_text())
    item["assets"]["VV"]["href"] = "../../../secret.tif"  # resolves outside the catalog folder
    path.write_text(json.dumps(item))
    path = item_json(cat / "catalog.json", "rgb_tiny_20240401")
    item = json.loads(path.read_text())
    item["id"] = "../../../escape"
    path.write_text(json.dumps(item))
    raw = tmp_path / "out" / "raw"
    summary = _run(SourceParams(href=str(cat / "catalog.json"), assets={"s1": ["VV", "VH"], "rgb": ["image"]}), raw)
    ledger = read_ledger(raw).set_index("id")
    assert "points outside the catalog folder" in ledger.loc["s1_tiny_20240316", "error"]
    assert ledger.loc["../../../escape", "status"] == "ok"
    assert (raw / "rgb" / safe_name("../../../escape") / "image.tif").is_file()
    assert safe_name("../../../escape") == "_.._.._escape"
    assert summary.failed == 1
    written = {p.resolve() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert all(p.is_relative_to(raw.resolve()) or p.name == "download.json" for p in written)
    assert not any(p.read_bytes() == b"not yours" for p in written)


def test_duplicate_listing_is_fetched_once(world, tmp_path):
    cat = tmp_path / "source"
    shutil.copytree(world.parent, cat)
    catalog = json.loads((cat / "catalog.json").read_text())
    child = next(link for link in catalog["links"] if link["rel"] == "child" and "sentinel-1" in link["href"])
    coll_path = (cat / child["href"]).resolve()
    coll = json.loads(coll_path.read_text())
    coll["links"].append(next(link for link in coll["links"] if link["rel"] == "item"))
    coll_path.write_text(json.dumps(coll))
    summary = _run(SourceParams(href=str(cat / "catalog.json")), tmp_path / "raw")
    assert (summary.items, summary.duplicates, summary.fetched) == (3, 1, 3)
    assert read_ledger(tmp_path / "raw")["id"].is_unique


# --- network faults ------------------------------------------------------------------------------


@pytest.fixture
def served(world):
    """The fixture world behind a loopback server, read as a remote static catalog."""
    with LoopbackServer(world.parent, stall_s=3) as srv:
        yield srv, SourceParams(href=f"{srv.url}/catalog.json", assets={"s1": ["VV", "VH"]})


def _vv(world: Path) -> str:
    return "/" + (item_json(world, "s1_tiny_20240316").parent / "VV.tif").relative_to(world.parent).as_posix()


def _s1(raw: Path) -> pd.Series:
    return read_ledger(raw).set_index("id").loc["s1_tiny_20240316"]


def test_404_fails_the_item_without_retrying(world, served, tmp_path):
    srv, source = served
    srv.fail(_vv(world), "404")
    summary = _run(source, tmp_path / "raw")
    row = _s1(tmp_path / "raw")
    assert row["status"] == "failed" and "VV: HTTP 404" in row["error"] and summary.failed == 1
    assert len(srv.requests_for(_vv(world))) == 1
    assert not (tmp_path / "raw" / "s1" / "s1_tiny_20240316" / "VV.tif").exists()
    assert _run(source, tmp_path / "raw").fetched == 1  # the failed item is tried again, and now succeeds


def test_500_then_success_is_retried(world, served, tmp_path):
    srv, source = served
    srv.fail(_vv(world), "500", "500")
    _run(source, tmp_path / "raw")
    assert _s1(tmp_path / "raw")["status"] == "ok"
    assert len(srv.requests_for(_vv(world))) == 3


def test_stall_past_timeout_is_retried_then_fails(world, served, tmp_path):
    srv, source = served
    srv.fail(_vv(world), "stall", "stall", "stall")
    _run(source, tmp_path / "raw", retries=2)
    row = _s1(tmp_path / "raw")
    assert row["status"] == "failed" and "gave up after 3 attempts: timed out after 0.5 s" in row["error"]
    srv.fail(_vv(world), "stall")
    _run(source, tmp_path / "raw")
    assert _s1(tmp_path / "raw")["status"] == "ok"


def test_dropped_connection_resumes_with_range(world, served, tmp_path):
    srv, source = served
    size = (world.parent / _vv(world).lstrip("/")).stat().st_size
    srv.fail(_vv(world), f"drop:{size // 3}")
    _run(source, tmp_path / "raw")
    ranges = [r[2] for r in srv.requests_for(_vv(world))]
    assert ranges == [None, f"bytes={size // 3}-"]
    out = tmp_path / "raw" / "s1" / "s1_tiny_20240316" / "VV.tif"
    assert sha256_file(out) == sha256_file(world.parent / _vv(world).lstrip("/"))


def test_part_file_from_an_interrupted_run_is_resumed(world, served, tmp_path):
    srv, source = served
    data = (world.parent / _vv(world).lstrip("/")).read_bytes()
    part = tmp_path / "raw" / "s1" / "s1_tiny_20240316" / "VV.tif.part"
    srv.fail(_vv(world), "drop:100")
    _run(source, tmp_path / "raw", retries=0)  # the run ends with 100 bytes in VV.tif.part
    assert part.stat().st_size == 100
    _run(source, tmp_path / "raw")
    assert [r[2] for r in srv.requests_for(_vv(world))] == [None, "bytes=100-"]
    assert (part.parent / "VV.tif").read_bytes() == data and not part.exists()


def test_wrong_checksum_never_lands(world, served, tmp_path):
    srv, source = served
    srv.fail(_vv(world), "corrupt", "corrupt", "corrupt")
    _run(source, tmp_path / "raw")
    row = _s1(tmp_path / "raw")
    assert row["status"] == "failed" and "sha256 checksum mismatch" in row["error"]
    folder = tmp_path / "raw" / "s1" / "s1_tiny_20240316"
    assert sorted(p.name for p in folder.iterdir()) == ["VH.tif"]  # no VV.tif, no VV.tif.part, no item.json


# --- the simulated world (msgfm simulate) ----------------------------------------------------------


@pytest.mark.slow  # starts a local Ray instance (5-20 s)
def test_items_as_ray_tasks_fetch_the_same_files_and_ledger(world, served, tmp_path):
    """ray.data_workers: 2 fetches each item in a Ray worker over HTTP (a 500 retried there): same files and ledger."""
    from msgfm.config import RayParams

    srv, source = served
    results = {}
    for name, ray_cfg in (("threads", None), ("ray", RayParams(data_workers=2, num_cpus=2))):
        srv.fail(_vv(world), "500")
        raw = tmp_path / name / "raw"
        cfg = DownloadParams(out_dir=raw, **FAST)
        summary = download(source, cfg, report_path=None, progress=False, ray_cfg=ray_cfg)
        assert (summary.fetched, summary.failed) == (3, 0)
        results[name] = (read_ledger(raw), {k: v[0] for k, v in _files(raw).items()})
    assert len(srv.requests_for(_vv(world))) == 4  # each run: the 500, then the retry
    pd.testing.assert_frame_equal(results["ray"][0], results["threads"][0])
    assert results["ray"][1] == results["threads"][1] and len(results["ray"][1]) == 2  # the source wants S1's VV, VH


def test_download_of_a_tiny_simulated_world_is_incremental_and_passes_the_raw_gate(tmp_path):
    from msgfm.config import AOIParams, GatesParams, SimulateParams
    from msgfm.sim.simulate import simulate_world
    from msgfm.validation.raw import validate_raw

    aoi = AOIParams(name="farmland", biome="temperate_farmland", lon=11.4, lat=48.2)
    sim = SimulateParams(out_dir=tmp_path / "source", aois=[aoi], size_px=36, fine_size_px=64, s2_dates=2, s1_dates=2)
    source = SourceParams(href=str(tmp_path / "source" / "catalog.json"))
    raw = tmp_path / "raw"
    simulate_world(sim.model_copy(update={"until": dt.date(2024, 4, 30)}), seed=0, progress=False)
    first = _run(source, raw)
    before = _files(raw)
    simulate_world(sim, seed=0, progress=False)  # later acquisitions are published
    second = _run(source, raw)
    assert first.failed == second.failed == 0 and first.fetched > 0 and second.fetched > 0
    assert second.skipped == first.items and second.items == first.items + second.fetched
    assert {k: v for k, v in _files(raw).items() if k in before} == before
    ledger = read_ledger(raw)
    assert set(ledger["sensor"]) == {"s1", "s2", "rgb", "dsm", "landcover"} and (ledger["aoi"] == "farmland").all()
    gates = GatesParams(min_pass_rate=1.0)
    result = validate_raw(raw, source, gates, gates_dir=tmp_path / "gates", reports_dir=tmp_path / "reports")
    assert result.passed and result.report["rows_checked"] == len(ledger), result.report["quarantined"]


def test_cli_download_reports_and_names_a_missing_catalog(world, tmp_path, repo_root, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from msgfm.cli import app

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["source"]["href"] = str(world)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke(app, ["download", "--params", "params.yaml"])
    assert run.exit_code == 0, run.output
    assert "download: 3 items offered, 3 fetched, 0 already present, 0 failed" in run.output
    assert read_ledger(tmp_path / "data" / "raw")["status"].eq("ok").all()
    assert json.loads((tmp_path / "data" / "reports" / "download.json").read_text())["fetched"] == 3
    params["source"]["href"] = "missing/catalog.json"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = CliRunner().invoke(app, ["download", "--params", "params.yaml"])
    assert run.exit_code == 1 and "error: missing/catalog.json: STAC catalog not found" in run.output
    assert "Traceback" not in run.output
