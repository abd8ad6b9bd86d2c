"""Hostile servers and catalogs, concurrent runs and secrets in errors: download never splices, shares or leaks."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from httpserver import LoopbackServer
from stac_fixture import edit_item, item_json, make_catalog
from typer.testing import CliRunner

from msgfm.cli import LOCK_BUSY_EXIT, app
from msgfm.config import DownloadParams, SourceParams
from msgfm.geo.io import atomic_write_bytes, sha256_file
from msgfm.ingest.download import download, read_ledger
from msgfm.ingest.sources import SourceError, iter_items
from msgfm.locks import RunLock

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


# --- item 2: one writer per output folder ----------------------------------------------------------

MSGFM = [sys.executable, "-m", "msgfm.cli"]


def _params(repo_root: Path, folder: Path, **sections: dict) -> Path:
    """The project's params.yaml with relative output paths (so they land in `folder`) and `sections` merged in."""
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    for name, values in sections.items():
        params[name].update(values)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_two_concurrent_downloads_one_refuses_naming_the_holder(world, tmp_path, repo_root):
    with LoopbackServer(world.parent, stall_s=60) as srv:
        srv.fail(_vv(world), "stall")  # the first run waits inside VV until the second one has been refused
        _params(repo_root, tmp_path, source={"href": f"{srv.url}/catalog.json"}, download={**FAST, "timeout_s": 90})
        first = subprocess.Popen([*MSGFM, "download"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not srv.requests_for(_vv(world)) and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first.poll() is None and srv.requests_for(_vv(world)), "the first download never reached VV"
            second = subprocess.run([*MSGFM, "download"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
            srv.release_stalls()
            assert first.wait(timeout=120) == 0, first.stderr.read()
        finally:
            first.kill()
            first.wait()
    lock = tmp_path / "data" / ".raw.msgfm.lock"
    assert second.returncode == LOCK_BUSY_EXIT, second.stderr
    assert f"msgfm download is already writing data/raw: {lock.relative_to(tmp_path)} is held by pid {first.pid}" in (
        second.stderr
    )
    assert "run msgfm download" in second.stderr and "Traceback" not in second.stderr
    ledger = read_ledger(tmp_path / "data" / "raw")
    assert (ledger["status"] == "ok").all() and len(ledger) == 1
    for key in ("VV", "VH"):  # every file complete and as published; no .part, no lock left
        got = tmp_path / "data" / "raw" / "s1" / IID / f"{key}.tif"
        assert sha256_file(got) == sha256_file(_vv_file(world).with_name(f"{key}.tif"))
    assert not list((tmp_path / "data" / "raw").rglob("*.part*")) and not lock.exists()


@pytest.mark.parametrize(
    ("stage", "folder"),
    [("pair", "chips"), ("coregister", "coreg"), ("validate_raw", "gates"), ("simulate", "source")],
)
def test_a_stage_refuses_while_another_run_writes_its_folder(stage, folder, tmp_path, repo_root, monkeypatch):
    _params(repo_root, tmp_path)
    monkeypatch.chdir(tmp_path)
    lock = Path("data") / f".{folder}.msgfm.lock"
    holder = RunLock(lock, run="other-run")
    with holder:
        run = CliRunner().invoke(app, [stage, "--params", "params.yaml"])
    assert run.exit_code == LOCK_BUSY_EXIT, run.output
    assert f"error: msgfm {stage} is already writing data/{folder}: {lock} is held by pid {os.getpid()}" in run.output
    assert "run other-run" in run.output and run.exception is None or isinstance(run.exception, SystemExit)
    assert not lock.exists()  # released and removed by its holder


def test_a_killed_holder_does_not_block_the_next_run(tmp_path, repo_root, monkeypatch):
    _params(repo_root, tmp_path)
    monkeypatch.chdir(tmp_path)
    code = "from msgfm.locks import RunLock; import time; RunLock('data/.chips.msgfm.lock').acquire(); print('held', flush=True); time.sleep(60)"  # noqa: E501
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert CliRunner().invoke(app, ["pair", "--params", "params.yaml"]).exit_code == LOCK_BUSY_EXIT
        holder.send_signal(signal.SIGKILL)
    finally:
        holder.wait()
    run = CliRunner().invoke(app, ["pair", "--params", "params.yaml"])
    assert run.exit_code == 2 and "already writing" not in run.output  # past the lock, on to the missing inputs


def test_atomic_path_keeps_a_live_writers_temporary_and_removes_a_dead_ones(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f".B02.tif.{int(dead.stdout)}-k1ll3d.part"
    live = tmp_path / f".B02.tif.{os.getpid()}-wr1t1ng.part"  # another thread or run writing the same file now
    for path in (killed, live):
        path.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "B02.tif", b"complete")
    assert not killed.exists() and live.read_bytes() == b"partial"


# --- item 8: no signed-URL secret in the ledger, gate tables, reports or logs ------------------------

SIGNED = "?sv=2024-05-04&se=2030-01-01&sp=r&skoid=abc&sig=SECRET"


def _sign_links(world: Path, srv: LoopbackServer) -> None:
    """Make the RGB item's link and the S1 assets absolute signed URLs, as a SAS-signed catalog has them."""
    for coll in world.parent.glob("*/collection.json"):
        text = coll.read_text()
        coll.write_text(text.replace('"./rgb_tiny_20240401/rgb_tiny_20240401.json"', f'"{srv.url}/{_rgb_item(world)}"'))

    def sign(item: dict) -> None:
        for key in ("VV", "VH"):
            item["assets"][key]["href"] = f"{srv.url}{_vv(world).replace('VV', key)}{SIGNED}"

    edit_item(world, IID, sign)


def _rgb_item(world: Path) -> str:
    return item_json(world, "rgb_tiny_20240401").relative_to(world.parent).as_posix() + SIGNED


def _texts(folder: Path) -> str:
    """Every file under `folder` as text, parquet tables by their cells (their bytes may be compressed)."""
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            parts.append(pd.read_parquet(path).astype(str).to_csv())
        else:
            parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def test_signed_url_secrets_never_reach_the_ledger_gates_reports_or_logs(tmp_path, repo_root):
    world = make_catalog(tmp_path / "source", [("s1", dt.date(2024, 3, 16)), ("rgb", dt.date(2024, 4, 1))])
    with LoopbackServer(world.parent) as srv:
        _sign_links(world, srv)
        srv.fail("/" + _rgb_item(world).split("?")[0], *["reset"] * 4)  # the signed item link: connection reset
        srv.fail(_vv(world), "reset", "reset", "reset")  # a signed asset: reset on every attempt
        srv.fail(_vv(world).replace("VV", "VH"), "echo:403")  # an HTTP error repeating the signed URL
        signed_root = f"{srv.url}/catalog.json{SIGNED}"
        _params(repo_root, tmp_path, source={"href": signed_root}, download={**FAST, "timeout_s": 5})
        runs = [subprocess.run([*MSGFM, stage], cwd=tmp_path, capture_output=True, text=True, timeout=300)
                for stage in ("download", "validate_raw")]  # fmt: skip
        srv.fail("/catalog.json", *["reset"] * 4)  # the catalog itself unreadable: the stage's own error message
        runs.append(subprocess.run([*MSGFM, "download"], cwd=tmp_path, capture_output=True, text=True, timeout=300))
    ledger = read_ledger(tmp_path / "data" / "raw").set_index("id")
    errors = ledger["error"].to_dict()
    assert "cannot read item" in errors["rgb_tiny_20240401"] and "connection lost" in errors[IID], errors
    assert "HTTP 403" in errors[IID] and "sig=<redacted>" in errors[IID]
    assert runs[0].returncode == 0 and runs[2].returncode == 1 and "cannot read STAC catalog" in runs[2].stderr
    assert (tmp_path / "data" / "gates" / "raw.parquet").is_file()
    logs = "\n".join(r.stdout + r.stderr for r in runs)
    assert "SECRET" not in logs and "SECRET" not in _texts(tmp_path / "data"), errors


@pytest.mark.parametrize(
    "text",
    [
        "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: /a.tif?sv=1&sig=SECRET (Caused by x)",
        "403 for https://acct.blob.core.windows.net/c/a.tif?se=2030&sp=r&skoid=SECRET&sig=SECRET",
        "denied /a.tif?X-Amz-Credential=SECRET&X-Amz-Signature=SECRET",
        "header Authorization: Bearer SECRET.token rejected; token=SECRET",
    ],
)
def test_redact_removes_secrets_wherever_they_appear(text):
    from msgfm.ingest.redact import redact

    assert "SECRET" not in redact(text) and redact(text).split()[0] == text.split()[0]


# --- item 5: catalog reads bounded in time, size, depth and count; never local files from a remote ---------


def _bounded(fn, seconds: float = 20.0):
    """Run `fn` on a daemon thread and return its result or exception; fail if it is still running after `seconds`."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except Exception as e:  # handed to the test as the outcome
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a read is unbounded"
    return out.get("error", out.get("value"))


def test_a_remote_catalog_never_reads_local_files(world, tmp_path):
    local = make_catalog(tmp_path / "local", [("rgb", dt.date(2024, 4, 1))], aoi="stolen")
    stolen_item = item_json(local, "rgb_stolen_20240401")
    with LoopbackServer(world.parent) as srv:
        catalog = json.loads(world.read_text())
        catalog["links"] += [
            {"rel": "child", "href": local.as_uri()},  # a whole local catalog
            {"rel": "item", "href": stolen_item.as_uri()},  # one local item, by file:// URL
        ]
        world.write_text(json.dumps(catalog))
        _run(SourceParams(href=f"{srv.url}/catalog.json"), tmp_path / "raw")
    ledger = read_ledger(tmp_path / "raw").set_index("id")
    assert "rgb_stolen_20240401" in ledger.index and ledger.loc[IID, "status"] == "ok"
    row = ledger.loc["rgb_stolen_20240401"]
    assert row["status"] == "failed" and "leads to a local file; refused" in row["error"]
    assert pd.isna(row["sensor"]) and pd.isna(row["aoi"])  # the file was never read: nothing of it is recorded


def test_a_stalled_catalog_read_gives_up_after_the_timeout(world, tmp_path):
    with LoopbackServer(world.parent, stall_s=30) as srv:
        srv.fail("/catalog.json", "stall")
        started = time.monotonic()
        outcome = _bounded(lambda: _run(SourceParams(href=f"{srv.url}/catalog.json"), tmp_path / "raw", timeout_s=0.5))
    assert isinstance(outcome, SourceError) and "cannot read STAC catalog" in str(outcome)
    assert "timed out" in str(outcome).lower() and time.monotonic() - started < 10


def test_an_oversized_catalog_document_is_refused(world, tmp_path):
    catalog = json.loads(world.read_text())
    catalog["description"] = "x" * 5000
    world.write_text(json.dumps(catalog))
    with LoopbackServer(world.parent) as srv:
        outcome = _bounded(
            lambda: _run(SourceParams(href=f"{srv.url}/catalog.json"), tmp_path / "raw", max_json_bytes=4096)
        )
    assert isinstance(outcome, SourceError) and "larger than download.max_json_bytes (4096 bytes)" in str(outcome)


def _chain(folder: Path, depth: int, items: int = 0) -> Path:
    """A local catalog nested `depth` children deep whose root links `items` copies of a missing item."""
    folder.mkdir(parents=True)
    for level in range(depth, -1, -1):
        links = [{"rel": "child", "href": f"./c{level + 1}.json"}] if level < depth else []
        links += [{"rel": "item", "href": f"./item{i}.json"} for i in range(items if level == 0 else 0)]
        doc = {"type": "Catalog", "stac_version": "1.0.0", "id": f"c{level}", "description": "d", "links": links}
        (folder / f"c{level}.json").write_text(json.dumps(doc))
    return folder / "c0.json"


@pytest.mark.parametrize(
    ("depth", "items", "limits", "message"),
    [
        (40, 0, {"max_catalog_depth": 8}, "nests deeper than download.max_catalog_depth (8)"),
        (0, 500, {"max_catalog_objects": 50}, "more than download.max_catalog_objects (50) catalogs and items"),
    ],
)
def test_catalog_walks_are_bounded_in_depth_and_objects(depth, items, limits, message, tmp_path):
    root = _chain(tmp_path / "deep", depth, items)
    outcome = _bounded(lambda: _run(SourceParams(href=str(root)), tmp_path / "raw", **limits))
    assert isinstance(outcome, SourceError) and message in str(outcome)
    assert not (tmp_path / "raw" / "acquisitions.parquet").exists()  # nothing half-listed recorded


def test_an_asset_larger_than_allowed_is_aborted(unsummed, tmp_path):
    edit_item(unsummed, IID, lambda item: item["assets"]["VV"].pop("file:size"))  # nothing declared at all
    with LoopbackServer(unsummed.parent) as srv:
        source = SourceParams(href=f"{srv.url}/catalog.json", assets={"s1": ["VV", "VH"]})
        _run(source, tmp_path / "raw", max_asset_bytes=1000)
    row = read_ledger(tmp_path / "raw").set_index("id").loc[IID]
    assert row["status"] == "failed" and "VV: the server sends more than the 1000 bytes expected" in row["error"]
    assert not list((tmp_path / "raw").rglob("VV.tif*"))  # neither the file nor a partial one


def _folder_source(world: Path, folder: Path) -> Path:
    """A folder source with one good S1 GeoTIFF and its JSON sidecar (VV.tif + VV.json)."""
    folder.mkdir()
    shutil.copyfile(_vv_file(world), folder / "VV.tif")
    (folder / "VV.json").write_text(json.dumps({"sensor": "s1", "datetime": "2024-03-16T10:30:00Z", "asset": "VV"}))
    return folder


def test_a_fifo_in_a_folder_source_is_refused_not_read(world, tmp_path):
    folder = _folder_source(world, tmp_path / "folder")
    os.mkfifo(folder / "pipe.tif")  # reading it would block forever
    (folder / "pipe.json").write_text(json.dumps({"sensor": "s1", "datetime": "2024-03-17T10:30:00Z"}))
    shutil.copyfile(_vv_file(world), folder / "side.tif")
    os.mkfifo(folder / "side.json")  # a FIFO sidecar
    records = _bounded(lambda: {r.id: r for r in iter_items(SourceParams(kind="folder", path=folder))})
    assert "not a regular file" in records["pipe"].error and "refused" in records["pipe"].error
    assert "side.json: sidecar refused" in records["side"].error and "not a regular file" in records["side"].error
    assert not records["VV"].error  # the good file beside them is kept


def test_a_yaml_alias_bomb_sidecar_is_refused(world, tmp_path):
    folder = _folder_source(world, tmp_path / "folder")
    shutil.copyfile(_vv_file(world), folder / "bomb.tif")
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (folder / "bomb.yaml").write_text("\n".join([*levels, "sensor: s1", "datetime: *a9", ""]))
    records = _bounded(lambda: {r.id: r for r in iter_items(SourceParams(kind="folder", path=folder))})
    assert "bomb.yaml: sidecar refused: 82 YAML aliases (at most 64)" in records["bomb"].error
    assert not records["VV"].error


def test_a_local_catalog_never_leads_out_of_its_folder(world, tmp_path):
    outside = make_catalog(tmp_path / "elsewhere", [("rgb", dt.date(2024, 4, 1))], aoi="stolen")
    stolen_item = item_json(outside, "rgb_stolen_20240401")
    catalog = json.loads(world.read_text())
    catalog["links"] += [
        {"rel": "child", "href": os.path.relpath(outside, world.parent)},  # ../elsewhere/catalog.json
        {"rel": "item", "href": str(stolen_item)},  # an absolute path out of the folder
    ]
    world.write_text(json.dumps(catalog))
    _run(SourceParams(href=str(world)), tmp_path / "raw")
    ledger = read_ledger(tmp_path / "raw").set_index("id")
    assert ledger.loc[IID, "status"] == "ok"  # the good item beside them is kept
    row = ledger.loc["rgb_stolen_20240401"]
    assert row["status"] == "failed" and "points outside the catalog folder" in row["error"]
    assert pd.isna(row["sensor"]) and len(ledger) == 2  # never read, and the child catalog was not walked
