"""Sources: a static catalog (path or URL), a STAC API on a loopback server, a folder with sidecars.

All three must yield the same item records for the same acquisitions.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
import yaml
from httpserver import LoopbackServer
from stac_fixture import ASSETS, BBOX, COLLECTIONS, make_catalog

from msgfm.config import DownloadParams, SourceParams
from msgfm.ingest.download import download, read_ledger
from msgfm.ingest.sources import SourceError, iter_items, make_signer

ITEMS = [("s2", dt.date(2024, 3, 15)), ("s1", dt.date(2024, 3, 16)), ("dsm", dt.date(2024, 4, 1))]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("world") / "source", ITEMS)


def _summary(records) -> dict[str, tuple]:
    return {
        r.id: (r.sensor, r.aoi, r.datetime[:10], r.crs, tuple(sorted(r.assets)), r.error)
        for r in sorted(records, key=lambda r: r.id)
    }


def _items(catalog: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(catalog.parent.rglob("*_tiny_*.json"))]


def test_static_catalog_by_path_gives_absolute_hrefs_inside_the_catalog(world):
    records = list(iter_items(SourceParams(href=str(world))))
    assert _summary(records) == {
        "dsm_tiny_20240401": ("dsm", "tiny", "2024-04-01", "EPSG:32632", ("dsm",), ""),
        "s1_tiny_20240316": ("s1", "tiny", "2024-03-16", "EPSG:32632", ("VH", "VV"), ""),
        "s2_tiny_20240315": ("s2", "tiny", "2024-03-15", "EPSG:32632", tuple(sorted(ASSETS["s2"])), ""),
    }
    for r in records:
        assert r.bbox == BBOX and r.root == str(world.parent)
        for a in r.assets.values():
            path = Path(a.href)
            assert path.is_absolute() and path.is_file() and path.is_relative_to(world.parent)
            assert a.size == path.stat().st_size and a.checksum.startswith("1220") and len(a.checksum) == 68


def test_static_catalog_by_url_and_missing_catalog(world):
    with LoopbackServer(world.parent) as srv:
        records = list(iter_items(SourceParams(href=f"{srv.url}/catalog.json")))
    assert _summary(records) == _summary(iter_items(SourceParams(href=str(world))))
    assert all(a.href.startswith(srv.url + "/") for r in records for a in r.assets.values())
    assert all(r.root is None for r in records)  # a remote catalog may not point at local files
    with pytest.raises(SourceError, match="nowhere/catalog.json: STAC catalog not found"):
        list(iter_items(SourceParams(href="nowhere/catalog.json")))


def test_stac_api_search_maps_collections_to_sensors_and_signs_hrefs(world, tmp_path):
    with LoopbackServer(world.parent) as srv:
        for item in _items(world):
            folder = next(world.parent.rglob(item["id"])).relative_to(world.parent)
            for a in item["assets"].values():
                a["href"] = f"{srv.url}/{folder.as_posix()}/{Path(a['href']).name}"
            item["properties"].pop("msgfm:sensor")  # a real API has no msgfm:sensor: the collection tells
            srv.items.append(item)
        cfg = SourceParams(
            kind="stac_api",
            url=f"{srv.url}/api",
            collections={"s2": COLLECTIONS["s2"], "s1": COLLECTIONS["s1"]},
            bbox=[10.0, 48.0, 11.0, 49.0],
            datetime="2024-03-01/2024-10-31",
        )
        records = list(iter_items(cfg, signer=_test_signer))
        searches = srv.requests_for("/api/search")
        srv.require_query = "sig=test"  # assets are only served with a signature, as on Planetary Computer
        srv.fail(
            "/" + next(world.parent.rglob("s1_tiny_20240316")).relative_to(world.parent).as_posix() + "/VV.tif", "404"
        )
        summary = download(
            cfg, DownloadParams(out_dir=tmp_path / "raw"), report_path=None, progress=False, signer=_test_signer
        )
    ledger = read_ledger(tmp_path / "raw").set_index("id")
    assert (summary.fetched, summary.failed) == (1, 1) and ledger.loc["s2_tiny_20240315", "status"] == "ok"
    assert (
        "HTTP 404" in ledger.loc["s1_tiny_20240316", "error"] and "sig=" not in ledger.loc["s1_tiny_20240316", "error"]
    )
    assert _summary(records) == {
        k: v for k, v in _summary(iter_items(SourceParams(href=str(world)))).items() if "dsm" not in k
    }
    assert all(a.href.endswith("?sig=test") for r in records for a in r.assets.values())
    assert searches, "pystac-client must have called /search"
    assert make_signer("none")({"a": 1}) == {"a": 1}


def _test_signer(item: dict) -> dict:
    for a in item["assets"].values():
        a["href"] += "?sig=test"
    return item


def test_stac_api_unreachable_is_a_source_error():
    with LoopbackServer() as srv:
        url = f"{srv.url}/nothing-here"
    cfg = SourceParams(kind="stac_api", url=url, collections={"s2": "sentinel-2-l2a"})
    with pytest.raises(SourceError, match="STAC API search failed"):
        list(iter_items(cfg))


def test_a_silent_stac_api_times_out_with_download_timeout_s():
    """A server that accepts connections and never answers: the search fails within download.timeout_s (issue 19)."""
    import socket
    import threading
    import time

    from msgfm.config import DownloadParams

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/stac/v1"
    cfg = SourceParams(kind="stac_api", url=url, collections={"s2": "sentinel-2-l2a"})
    outcome: list[BaseException | None] = []

    def search() -> None:
        try:
            list(iter_items(cfg, limits=DownloadParams(timeout_s=0.5)))
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    start = time.monotonic()
    worker = threading.Thread(target=search, daemon=True)
    worker.start()
    worker.join(15)
    silent.close()
    assert not worker.is_alive(), "the STAC API search still hangs after 15 s"
    assert isinstance(outcome[0], SourceError) and "download.timeout_s 0.5 s" in str(outcome[0]), outcome
    assert time.monotonic() - start < 10


def test_static_catalog_given_as_an_api_is_a_clear_error(world):
    with LoopbackServer(world.parent) as srv:
        cfg = SourceParams(kind="stac_api", url=f"{srv.url}/catalog.json", collections={"s2": "sentinel-2-l2a"})
        with (
            pytest.warns(UserWarning),
            pytest.raises(SourceError, match="not a searchable STAC API .* use source.kind: static"),
        ):
            list(iter_items(cfg))


def test_folder_with_json_and_yaml_sidecars_gives_the_same_records(world, tmp_path):
    folder = tmp_path / "folder"
    for item in _items(world):
        src_dir = next(world.parent.rglob(item["id"]))
        for key in item["assets"]:
            dst = folder / item["id"] / f"{key}.tif"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_dir / f"{key}.tif", dst)
            meta = {"id": item["id"], "sensor": item["properties"]["msgfm:sensor"], "asset": key}
            meta |= {"datetime": item["properties"]["datetime"], "aoi": "tiny"}
            if key == "VV":
                dst.with_suffix(".yaml").write_text(yaml.safe_dump(meta))
            else:
                dst.with_suffix(".json").write_text(json.dumps(meta))
    (folder / "stray.tif").write_bytes((folder / "dsm_tiny_20240401" / "dsm.tif").read_bytes())
    records = list(iter_items(SourceParams(kind="folder", path=folder)))
    by_id = {r.id: r for r in records}
    assert "no sidecar stray.json or stray.yaml" in by_id.pop("stray").error
    assert _summary(by_id.values()) == _summary(iter_items(SourceParams(href=str(world))))
    assert by_id["dsm_tiny_20240401"].bbox == pytest.approx(BBOX, abs=0.05)  # read from the GeoTIFF, WGS84
    raw = tmp_path / "raw"
    summary = download(
        SourceParams(kind="folder", path=folder), DownloadParams(out_dir=raw), report_path=None, progress=False
    )
    ledger = read_ledger(raw).set_index("id")
    assert (summary.fetched, summary.failed) == (3, 1) and "no sidecar" in ledger.loc["stray", "error"]
    assert (raw / "s1" / "s1_tiny_20240316" / "VV.tif").read_bytes() == (
        folder / "s1_tiny_20240316" / "VV.tif"
    ).read_bytes()


def test_items_of_unmapped_collections_become_failed_records(world, tmp_path):
    shutil.copytree(world.parent, tmp_path / "cat")
    item_path = next((tmp_path / "cat").rglob("s1_tiny_20240316.json"))
    item = json.loads(item_path.read_text())
    item["properties"].pop("msgfm:sensor")
    item_path.write_text(json.dumps(item))
    records = {r.id: r for r in iter_items(SourceParams(href=str(tmp_path / "cat" / "catalog.json")))}
    assert "cannot tell the sensor of item s1_tiny_20240316" in records["s1_tiny_20240316"].error
    assert records["s2_tiny_20240315"].error == ""
