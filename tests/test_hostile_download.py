"""Hostile servers and catalogs, concurrent runs and secrets in errors: download never splices, shares or leaks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from httpserver import LoopbackServer
from stac_fixture import edit_item, item_json, make_catalog

from msgfm.config import DownloadParams, SourceParams
from msgfm.ingest.download import download, read_ledger

ITEMS = [("s1", dt.date(2024, 3, 16))]
FAST = {"retries": 2, "backoff_s": 0.01, "timeout_s": 2.0, "workers": 2}
IID = "s1_tiny_20240316"


@pytest.fixture
def world(tmp_path) -> Path:
    """A one-item S1 catalog of our own (tests replace its files as a publisher would)."""
    return make_catalog(tmp_path / "source", ITEMS)


def _run(source: SourceParams, raw: Path, **kw):
    cfg = DownloadParams(out_dir=raw, **{**FAST, **kw})
    return download(source, cfg, report_path=raw.parent / "reports" / "download.json", progress=False)


def _vv_file(world: Path) -> Path:
    return item_json(world, IID).parent / "VV.tif"


def _vv(world: Path) -> str:
    return "/" + _vv_file(world).relative_to(world.parent).as_posix()


def _republish(world: Path) -> bytes:
    """Replace VV.tif by other bytes of the same size (B): only the server's validator tells the versions apart."""
    vv = _vv_file(world)
    b = bytes(x ^ 0x5A for x in vv.read_bytes())
    vv.write_bytes(b)
    return b


# --- item 3: resume only the same version ----------------------------------------------------------


def _cut_midway(world: Path, srv: LoopbackServer, raw: Path) -> Path:
    """Run once with the connection cut halfway through VV (no retry): VV.tif.part holds the first half of A."""
    size = _vv_file(world).stat().st_size
    srv.fail(_vv(world), f"drop:{size // 2}")
    _run(SourceParams(href=f"{srv.url}/catalog.json", assets={"s1": ["VV"]}), raw, retries=0)
    part = raw / "s1" / IID / "VV.tif.part"
    assert part.stat().st_size == size // 2
    return part


@pytest.fixture
def unsummed(world) -> Path:
    """The world with VV declaring only file:size (no file:checksum), so verification cannot catch a splice."""
    edit_item(world, IID, lambda item: item["assets"]["VV"].pop("file:checksum"))
    return world


def test_resume_after_the_file_changed_gets_the_new_file_entirely(unsummed, tmp_path):
    world = unsummed
    with LoopbackServer(world.parent) as srv:
        part = _cut_midway(world, srv, tmp_path / "raw")
        b = _republish(world)
        srv.requests.clear()
        srv.headers.clear()
        _run(SourceParams(href=f"{srv.url}/catalog.json", assets={"s1": ["VV"]}), tmp_path / "raw")
    assert (part.parent / "VV.tif").read_bytes() == b  # B entirely, never half A + half B
    assert srv.headers[-1].get("If-Range") and srv.requests[-1][2]  # asked for a resume guarded by If-Range
    assert not part.exists() and not (part.parent / "VV.tif.part.json").exists()
    assert read_ledger(tmp_path / "raw").set_index("id").loc[IID, "status"] == "ok"


def test_a_server_that_ignores_if_range_is_caught_by_the_validator(unsummed, tmp_path):
    world = unsummed
    with LoopbackServer(world.parent) as srv:
        srv.honour_if_range = False  # answers 206 with the new file's tail and its new ETag
        part = _cut_midway(world, srv, tmp_path / "raw")
        b = _republish(world)
        srv.requests.clear()
        _run(SourceParams(href=f"{srv.url}/catalog.json", assets={"s1": ["VV"]}), tmp_path / "raw", retries=1)
    assert (part.parent / "VV.tif").read_bytes() == b
    size = len(b)
    assert [r[2] for r in srv.requests_for(_vv(world))] == [f"bytes={size // 2}-", None]  # one restart, from zero


def test_a_part_without_a_validator_is_not_resumed(world, tmp_path):
    with LoopbackServer(world.parent) as srv:
        srv.validators = False  # no ETag, no Last-Modified: a partial file's version cannot be checked
        part = _cut_midway(world, srv, tmp_path / "raw")
        srv.requests.clear()
        _run(SourceParams(href=f"{srv.url}/catalog.json", assets={"s1": ["VV"]}), tmp_path / "raw")
    assert [r[2] for r in srv.requests_for(_vv(world))] == [None]
    assert (part.parent / "VV.tif").read_bytes() == _vv_file(world).read_bytes()
