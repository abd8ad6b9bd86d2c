"""Safety defaults: no unpickling of checkpoints, servers bound to loopback, no credentials in params or logs.

Paths from catalogs confined to the data folder: tests/test_download.py
(test_untrusted_ids_keys_and_hrefs_never_write_outside_raw). Safetensors save/load round trip:
tests/test_model_hub.py.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import os
import re
from pathlib import Path

import pytest
import yaml
from httpserver import LoopbackServer
from stac_fixture import COLLECTIONS, make_catalog

from msgfm.config import DownloadParams, Params, RayParams, SourceParams
from msgfm.ingest.download import download, read_ledger

CODE_DIRS = ("msgfm", "flows")
SECRET_WORDS = re.compile(
    r"token|secret|passw|api[_-]?key|apikey|credential|private[_-]?key|access[_-]?key|sas|signature", re.I
)
SECRET_VALUES = re.compile(r"[?&](sig|sv|se|st|sp|token|key)=|AKIA[0-9A-Z]{16}|-----BEGIN|eyJ[A-Za-z0-9_-]{10,}")


def _sources(repo_root: Path) -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (repo_root / d).rglob("*.py"))


def _calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.Call)]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword(call: ast.Call, name: str) -> object:
    kw = next((k for k in call.keywords if k.arg == name), None)
    return kw.value.value if kw is not None and isinstance(kw.value, ast.Constant) else None


def test_no_unpickling_load_in_project_code(repo_root):
    """torch.load only with weights_only=True; no pickle/dill/joblib loads at all (models are safetensors)."""
    offending = []
    for path in _sources(repo_root):
        text = path.read_text()
        for call in _calls(path):
            name = _dotted(call.func)
            where = f"{path.relative_to(repo_root)}:{call.lineno} {name}("
            if name.endswith("torch.load") and _keyword(call, "weights_only") is not True:
                offending.append(where)
            if name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load", "cloudpickle.load"):
                offending.append(where)
        if re.search(r"^\s*from torch import .*\bload\b", text, re.M):
            offending.append(f"{path.relative_to(repo_root)}: imports torch.load under another name")
    assert not offending, f"unsafe deserialisation: {offending}"
    assert "safetensors" in (repo_root / "msgfm/models/hub.py").read_text()


def test_a_pickled_payload_in_a_checkpoint_is_refused(tmp_path):
    """What weights_only=True (the pretrain resume path) does with a checkpoint that carries code."""
    import pickle

    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "optimizer.pt"
    with open(bad, "wb") as f:
        pickle.dump({"state": Payload()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad, weights_only=True)
    assert not marker.exists()


def test_prefect_server_binds_loopback_by_default(repo_root, monkeypatch):
    from prefect.settings import Settings

    monkeypatch.delenv("PREFECT_SERVER_API_HOST", raising=False)
    assert Settings().server.api.host == "127.0.0.1"
    documented = [
        f"{p.relative_to(repo_root)}: {line.strip()}"
        for p in [repo_root / "README.md", *(repo_root / "docs").glob("*.md"), *_sources(repo_root)]
        for line in p.read_text().splitlines()
        if "prefect server start" in line
    ]
    assert documented, "the docs say how to start the Prefect server"
    exposed = [d for d in documented if "--host 127.0.0.1" not in d]
    assert not exposed, f"documented server starts not bound to 127.0.0.1: {exposed}"


def test_ray_dashboard_off_and_loopback_by_default(repo_root):
    import inspect

    import ray

    assert RayParams().include_dashboard is False  # the schema's default ...
    assert yaml.safe_load((repo_root / "params.yaml").read_text())["ray"]["include_dashboard"] is False  # ... and ours
    assert inspect.signature(ray.init).parameters["dashboard_host"].default == "127.0.0.1"
    inits = [c for p in _sources(repo_root) for c in _calls(p) if _dotted(c.func) == "ray.init"]
    # a local instance: no address, or address="local" (never join another process's `ray start` cluster);
    # joining a cluster by its address starts nothing
    local = [c for c in inits if not any(k.arg == "address" for k in c.keywords) or _keyword(c, "address") == "local"]
    assert local, "pretrain starts a local Ray instance with ray.init"
    assert all(_keyword(c, "dashboard_host") == "127.0.0.1" for c in local)


def _walk(node: object, path: str = "") -> list[tuple[str, object]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in [(f"{path}.{k}", v), *_walk(v, f"{path}.{k}")]]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _walk(v, f"{path}[{i}]")]
    return []


def test_no_credentials_in_params(repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    pairs = _walk(params)
    assert len(pairs) > 100  # the walk sees the whole file
    secret_keys = [k for k, _ in pairs if SECRET_WORDS.search(k.rsplit(".", 1)[-1])]
    secret_values = [(k, v) for k, v in pairs if isinstance(v, str) and SECRET_VALUES.search(v)]
    assert not secret_keys and not secret_values, (secret_keys, secret_values)

    def fields(model: type, prefix: str = "") -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            out.append(f"{prefix}{name}")
            sub = info.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                out += fields(sub, f"{prefix}{name}.")
        return out

    schema = fields(Params)
    assert "source.sign" in schema  # the walk reaches nested sections
    assert not [f for f in schema if SECRET_WORDS.search(f.rsplit(".", 1)[-1])], "a credential field in the schema"


def test_signing_token_from_the_environment_is_never_logged_or_stored(tmp_path, monkeypatch, caplog):
    """A SAS-style token read from an environment variable by the signer reaches no log, ledger, report or item."""
    token = "sv=2024&sig=S3CR3T-t0ken-value"
    monkeypatch.setenv("MSGFM_TEST_SAS", token)
    catalog = make_catalog(tmp_path / "source", [("s1", dt.date(2024, 3, 16)), ("s2", dt.date(2024, 3, 15))])
    with LoopbackServer(catalog.parent) as srv:
        items = []
        for item_path in sorted(catalog.parent.rglob("*_tiny_*.json")):
            item = json.loads(item_path.read_text())
            folder = item_path.parent.relative_to(catalog.parent).as_posix()
            for a in item["assets"].values():
                a["href"] = f"{srv.url}/{folder}/{Path(a['href']).name}"
            items.append(item)
        srv.items.extend(items)
        srv.require_query = "sig="

        def sign(item: dict) -> dict:
            for a in item["assets"].values():
                a["href"] += "?" + os.environ["MSGFM_TEST_SAS"]
            return item

        s1_dir = next(p for p in catalog.parent.rglob("s1_tiny_20240316") if p.is_dir())
        vv = "/" + (s1_dir / "VV.tif").relative_to(catalog.parent).as_posix()
        srv.fail(vv, "500", "404")  # a retried error and a final one: both are logged
        cfg = SourceParams(
            kind="stac_api", url=f"{srv.url}/api", collections={"s1": COLLECTIONS["s1"], "s2": COLLECTIONS["s2"]}
        )
        caplog.set_level(logging.DEBUG, logger="msgfm")
        caplog.set_level(logging.INFO)
        raw = tmp_path / "raw"
        summary = download(
            cfg,
            DownloadParams(out_dir=raw, retries=2, backoff_s=0.01, timeout_s=2),
            report_path=tmp_path / "download.json",
            progress=False,
            signer=sign,
        )
    assert (summary.fetched, summary.failed) == (1, 1)  # the token worked for the good item
    assert any("HTTP 500" in r.getMessage() for r in caplog.records)  # the errors were logged ...
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "S3CR3T" not in logged  # ... without the token
    ledger = read_ledger(raw)
    assert "HTTP 404" in ledger.set_index("id").loc["s1_tiny_20240316", "error"]
    stored = [ledger.to_json(date_format="iso"), (tmp_path / "download.json").read_text()]
    stored += [p.read_text() for p in raw.rglob("item.json")]
    assert len(stored) == 3 and not [s for s in stored if "S3CR3T" in s]
