"""`msgfm download`: fetch every acquisition's assets into data/raw and keep the acquisitions ledger.

Layout (docs/data-layout.md): `data/raw/{sensor}/{item_id}/{asset_key}.tif`, the item's STAC JSON
beside them as `item.json` (hrefs rewritten to the local files), and `data/raw/acquisitions.parquet`,
one row per item with its status.

- Concurrent: items are fetched by a thread pool (`download.workers`), with a tqdm bar.
- Robust: HTTP errors and timeouts are retried with exponential backoff (`retries`, `backoff_s`);
  404/401/403/410 are not. A partly received file is kept as `{asset}.tif.part` and resumed with an
  HTTP Range request, on this attempt or on the next run.
- Verified: `file:size` and `file:checksum` (multihash) are checked before the atomic rename into
  place; a file that does not match is deleted, so nothing corrupt lands under its final name.
- Incremental: items whose ledger row is `ok`, whose files are all present and whose declared assets
  (`file:checksum`, `file:size`, the item's `updated` time: `item_fingerprint`) are unchanged are not
  touched (their bytes stay identical); failed items are tried again on every run, and an item the
  publisher changed (a re-rendered simulated world, a reprocessed scene) is fetched again.
- Untrusting: asset hrefs are never used as paths. Output names come from sanitised sensor, item
  id and asset key and must resolve inside `out_dir`; a local href must lie inside the catalog's
  folder, and a remote catalog may not point at local files. Such assets fail the item with a
  ledger error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from msgfm.config import DownloadParams, SourceParams
from msgfm.geo.io import atomic_path, atomic_write_json
from msgfm.ingest.sources import AssetRecord, ItemRecord, Signer, is_url, iter_items

log = logging.getLogger(__name__)

LEDGER_NAME = "acquisitions.parquet"
LEDGER_COLUMNS = [
    "id",
    "sensor",
    "aoi",
    "biome",
    "datetime",
    "bbox",
    "crs",
    "assets",
    "item_path",
    "status",
    "error",
    "fingerprint",
]
_NO_RETRY_STATUS = {400, 401, 403, 404, 405, 410, 451}
_CHUNK = 1 << 16

_MULTIHASH = {"12": ("sha256", 32), "13": ("sha512", 64), "11": ("sha1", 20), "d501": ("md5", 16)}


class DownloadError(RuntimeError):
    """One asset could not be fetched or verified; the message names the asset and the reason."""


class _Retryable(DownloadError):
    """A transient failure (timeout, dropped connection, 5xx, 429) worth another attempt."""


class VerifyError(DownloadError):
    """The fetched bytes are not what the item declares (size or checksum)."""


@dataclass
class DownloadSummary:
    """What one run did; also written to data/reports/download.json."""

    items: int
    fetched: int
    skipped: int
    failed: int
    duplicates: int
    bytes: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# --- names ---------------------------------------------------------------------------------------


def safe_name(text: str) -> str:
    """A single path component from untrusted text: only [A-Za-z0-9._-], no leading dots, at most 120 chars."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")[:120]
    return name or "_"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


# --- ledger --------------------------------------------------------------------------------------


def read_ledger(out_dir: str | Path) -> pd.DataFrame:
    """The acquisitions ledger, or an empty one with the ledger columns."""
    path = Path(out_dir) / LEDGER_NAME
    if not path.is_file():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in LEDGER_COLUMNS})
    return pd.read_parquet(path)


def _write_ledger(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    table = pd.DataFrame(rows, columns=LEDGER_COLUMNS).sort_values("id", kind="stable").reset_index(drop=True)
    table["datetime"] = pd.to_datetime(table["datetime"], utc=True, errors="coerce")
    path = out_dir / LEDGER_NAME
    with atomic_path(path, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return path


def _parse_datetime(text: str | None) -> pd.Timestamp | None:
    if not text:
        return None
    ts = pd.to_datetime(text, utc=True, errors="coerce")
    return None if pd.isna(ts) else ts


def _ledger_row(rec: ItemRecord, assets: dict[str, str], item_path: str, error: str) -> dict[str, Any]:
    return {
        "id": rec.id,
        "sensor": rec.sensor,
        "aoi": rec.aoi,
        "biome": rec.biome,
        "datetime": _parse_datetime(rec.datetime),
        "bbox": rec.bbox,
        "crs": rec.crs,
        "assets": json.dumps(assets, sort_keys=True),
        "item_path": item_path,
        "status": "failed" if error else "ok",
        "error": error,
        "fingerprint": item_fingerprint(rec),
    }


def item_fingerprint(rec: ItemRecord) -> str:
    """16 hex digits over what the source declares of the item's wanted assets and its `updated` time."""
    declared = {key: [asset.checksum, asset.size] for key, asset in sorted(rec.assets.items())}
    updated = (rec.item.get("properties") or {}).get("updated")
    blob = json.dumps({"assets": declared, "updated": updated}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _complete(row: dict[str, Any], out_dir: Path) -> bool:
    """An ok ledger row whose item.json and asset files are all still on disk."""
    if row.get("status") != "ok":
        return False
    paths = [row.get("item_path") or "", *json.loads(row.get("assets") or "{}").values()]
    return all(p and (out_dir / p).is_file() for p in paths)


# --- verification --------------------------------------------------------------------------------


def _verify(path: Path, asset: AssetRecord) -> None:
    """Raise DownloadError when the file's size or checksum differs from what the item declares."""
    size = path.stat().st_size
    if asset.size is not None and size != asset.size:
        raise VerifyError(f"{asset.key}: size {size} bytes, item says file:size {asset.size}")
    if not asset.checksum:
        return
    code = asset.checksum[:4] if asset.checksum.lower().startswith("d501") else asset.checksum[:2]
    algo = _MULTIHASH.get(code.lower())
    if algo is None:
        log.warning("%s: unsupported file:checksum multihash %s, not verified", asset.key, asset.checksum[:8])
        return
    name, _ = algo
    digest_hex = asset.checksum[len(code) + 2 :].lower()
    h = hashlib.new(name)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != digest_hex:
        raise VerifyError(
            f"{asset.key}: {name} checksum mismatch (got {h.hexdigest()[:12]}..., item says {digest_hex[:12]}...)"
        )


# --- fetching ------------------------------------------------------------------------------------


class Fetcher:
    """Fetches assets (local copy or HTTP with Range resume), verified, into place; one per download run."""

    def __init__(self, cfg: DownloadParams) -> None:
        self.cfg = cfg
        self._local = threading.local()

    def _session(self):
        import requests

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def fetch(self, asset: AssetRecord, dest: Path, root: str | None) -> int:
        """Put the verified asset at `dest` (atomically); return the bytes written (0 if already there)."""
        if dest.is_file():
            try:
                _verify(dest, asset)
                return 0
            except VerifyError:
                log.warning("%s: existing file does not verify, fetching again", dest)
        href = asset.href
        if is_url(href):
            if urlparse(href).scheme.lower() not in ("http", "https"):
                raise DownloadError(f"{asset.key}: unsupported href scheme in {href} (http, https or local files only)")
            return self._fetch_http(asset, dest)
        return self._copy_local(asset, dest, root)

    def _copy_local(self, asset: AssetRecord, dest: Path, root: str | None) -> int:
        src = Path(asset.href.removeprefix("file://"))
        if root is None:
            raise DownloadError(f"{asset.key}: local href {asset.href} in a remote source is refused")
        if not _inside(src, Path(root)):
            raise DownloadError(f"{asset.key}: href {asset.href} points outside the catalog folder {root}; refused")
        if not src.is_file():
            raise DownloadError(f"{asset.key}: file not found: {src}")
        with atomic_path(dest, suffix=".part") as tmp:
            shutil.copyfile(src, tmp)
            _verify(tmp, asset)
            return tmp.stat().st_size

    def _fetch_http(self, asset: AssetRecord, dest: Path) -> int:
        part = dest.with_name(dest.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        attempts = self.cfg.retries + 1
        last = ""
        for attempt in range(attempts):
            try:
                self._get(asset, part)
                got = part.stat().st_size
                if asset.size is not None and got < asset.size:
                    raise _Retryable(f"incomplete: {got} of {asset.size} bytes")
                try:
                    _verify(part, asset)
                except VerifyError:
                    part.unlink(missing_ok=True)  # corrupt or from a changed source: never resume from it
                    raise
                os.replace(part, dest)
                return got
            except (_Retryable, VerifyError) as e:
                last = str(e)
            if attempt + 1 < attempts:
                delay = self.cfg.backoff_s * 2**attempt
                log.info("%s: %s; retry %d/%d in %.1f s", asset.key, last, attempt + 1, self.cfg.retries, delay)
                time.sleep(delay)
        raise DownloadError(f"{asset.key}: gave up after {attempts} attempts: {last}")

    def _get(self, asset: AssetRecord, part: Path) -> None:
        """One GET into `part`, resuming with Range when a partial file exists."""
        import requests
        import urllib3

        have = part.stat().st_size if part.is_file() else 0
        if asset.size is not None and have > asset.size:
            part.unlink()
            have = 0
        if asset.size is not None and have == asset.size:
            return  # complete from an earlier attempt; verification decides
        headers = {"Range": f"bytes={have}-"} if have else {}
        url = asset.href
        try:
            with self._session().get(url, headers=headers, stream=True, timeout=self.cfg.timeout_s) as r:
                if r.status_code == 416 and have:
                    part.unlink()
                    raise _Retryable(f"server refused the resume range at byte {have}; restarting")
                if r.status_code in _NO_RETRY_STATUS:
                    raise DownloadError(f"{asset.key}: HTTP {r.status_code} {r.reason} for {_redact(url)}")
                if r.status_code >= 400:
                    raise _Retryable(f"HTTP {r.status_code} {r.reason} for {_redact(url)}")
                if have and r.status_code == 206 and _range_start(r) != have:
                    part.unlink()
                    raise _Retryable(f"server resumed at the wrong offset (asked for byte {have}); restarting")
                mode = "ab" if have and r.status_code == 206 else "wb"
                announced = int(r.headers.get("Content-Length") or -1)
                received = 0
                with open(part, mode) as f:
                    # read1 hands over whatever arrived, so a dropped connection keeps every received byte
                    while block := r.raw.read1(_CHUNK, decode_content=True):
                        f.write(block)
                        received += len(block)
                if 0 <= received < announced:
                    raise _Retryable(f"connection closed after {received} of {announced} bytes of {_redact(url)}")
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            raise _Retryable(f"timed out after {self.cfg.timeout_s} s reading {_redact(url)}") from None
        except (requests.ConnectionError, urllib3.exceptions.HTTPError, ConnectionError) as e:
            got = part.stat().st_size if part.is_file() else 0
            raise _Retryable(
                f"connection lost with {got} bytes of {_redact(url)} received ({type(e).__name__})"
            ) from None


def _redact(url: str) -> str:
    """The URL without its query string (SAS tokens must not land in logs or the ledger)."""
    return url.split("?", 1)[0]


def _range_start(response) -> int:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else -1


# --- items ---------------------------------------------------------------------------------------


def _fetch_item(rec: ItemRecord, out_dir: Path, fetcher: Fetcher) -> tuple[dict[str, Any], int]:
    """Fetch one item's wanted assets and write its item.json; return (ledger row, bytes written)."""
    if rec.error:
        return _ledger_row(rec, {}, "", rec.error), 0
    item_dir = out_dir / safe_name(rec.sensor or "unknown") / safe_name(rec.id)
    if not _inside(item_dir, out_dir):
        return _ledger_row(rec, {}, "", f"item id {rec.id!r} does not give a folder inside {out_dir}"), 0
    assets: dict[str, str] = {}
    errors: list[str] = []
    written = 0
    local_item = json.loads(json.dumps(rec.item))
    local_item["links"] = []
    local_item["assets"] = {}
    used: dict[str, str] = {}
    for key, asset in rec.assets.items():
        name = safe_name(key) + ".tif"
        if name in used:
            errors.append(f"{key}: asset key collides with {used[name]!r} after sanitising")
            continue
        used[name] = key
        dest = item_dir / name
        try:
            written += fetcher.fetch(asset, dest, rec.root)
        except DownloadError as e:
            errors.append(str(e))
            continue
        except OSError as e:
            errors.append(f"{key}: {e}")
            continue
        assets[key] = dest.relative_to(out_dir).as_posix()
        entry = dict(rec.item["assets"][key])
        entry["href"] = f"./{name}"
        local_item["assets"][key] = entry
    if errors:
        return _ledger_row(rec, assets, "", "; ".join(errors)), written
    item_path = item_dir / "item.json"
    atomic_write_json(item_path, local_item)
    return _ledger_row(rec, assets, item_path.relative_to(out_dir).as_posix(), ""), written


def download(
    source: SourceParams,
    cfg: DownloadParams,
    *,
    report_path: str | Path | None = "data/reports/download.json",
    signer: Signer | None = None,
    progress: bool = True,
) -> DownloadSummary:
    """Fetch every acquisition not yet complete in the ledger; update the ledger; return what happened."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = {r["id"]: r for r in read_ledger(out_dir).to_dict(orient="records")}
    plan = _plan(source, signer, ledger, out_dir)
    skipped = plan.offered - len(plan.todo)
    log.info(
        "download: %d items offered, %d already in the ledger, %d to fetch (%d changed since fetched)",
        plan.offered,
        skipped,
        len(plan.todo),
        plan.changed,
    )
    total_bytes, failed = _fetch_all(plan.todo, out_dir, cfg, ledger, progress)
    _write_ledger(out_dir, list(ledger.values()))
    summary = DownloadSummary(
        items=plan.offered,
        fetched=len(plan.todo) - failed,
        skipped=skipped,
        failed=failed,
        duplicates=plan.duplicates,
        bytes=total_bytes,
    )
    if report_path is not None:
        atomic_write_json(report_path, summary.as_dict())
    log.info("download: %s", summary.as_dict())
    return summary


@dataclass
class _Plan:
    """The source's items that need fetching, and how many it offered, listed twice, or changed."""

    todo: list[ItemRecord]
    offered: int
    duplicates: int
    changed: int


def _plan(source: SourceParams, signer: Signer | None, ledger: dict[str, dict[str, Any]], out_dir: Path) -> _Plan:
    """List the source once: skip repeated ids and items complete and unchanged in the ledger; fail folder clashes."""
    todo: list[ItemRecord] = []
    seen: set[str] = set()
    folders: dict[str, str] = {}
    duplicates = changed = 0
    for rec in iter_items(source, signer=signer):
        if rec.id in seen:
            duplicates += 1
            log.warning("item %s is listed more than once by the source; the first listing is used", rec.id)
            continue
        seen.add(rec.id)
        folder = f"{safe_name(rec.sensor or 'unknown')}/{safe_name(rec.id)}"
        if folder in folders and not rec.error:
            rec.error = f"item id {rec.id!r} maps to the same folder as {folders[folder]!r} after sanitising"
        folders.setdefault(folder, rec.id)
        if rec.id in ledger and _complete(ledger[rec.id], out_dir):
            if ledger[rec.id].get("fingerprint") == item_fingerprint(rec):
                continue
            changed += 1
        todo.append(rec)
    return _Plan(todo, len(seen), duplicates, changed)


def _fetch_all(
    todo: list[ItemRecord], out_dir: Path, cfg: DownloadParams, ledger: dict[str, dict[str, Any]], progress: bool
) -> tuple[int, int]:
    """Fetch the items on `cfg.workers` threads, putting each one's ledger row in `ledger`; (bytes, failed items)."""
    from tqdm import tqdm

    fetcher = Fetcher(cfg)
    total_bytes = 0
    failed = 0
    with (
        ThreadPoolExecutor(max_workers=cfg.workers) as pool,
        tqdm(total=len(todo), desc="download", unit="item", disable=not progress) as bar,
    ):
        futures = {pool.submit(_fetch_item, rec, out_dir, fetcher): rec for rec in todo}
        for future in as_completed(futures):
            row, nbytes = future.result()
            ledger[row["id"]] = row
            total_bytes += nbytes
            if row["status"] != "ok":
                failed += 1
                log.warning("%s: %s", row["id"], row["error"])
            bar.update(1)
    return total_bytes, failed
