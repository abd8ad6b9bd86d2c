"""`msgfm download`: fetch every acquisition's assets into data/raw and keep the acquisitions ledger.

Layout (docs/data-layout.md): `data/raw/{sensor}/{item_id}/{asset_key}.tif`, the item's STAC JSON
beside them as `item.json` (hrefs rewritten to the local files), and `data/raw/acquisitions.parquet`,
one row per item with its status.

- Concurrent: items are fetched by a thread pool (`download.workers`), or as Ray tasks when
  `ray.data_workers > 1` (msgfm.cluster.tasks: the nodes of a cluster fetch into shared storage), with a tqdm bar.
- Robust: HTTP errors and timeouts are retried with exponential backoff (`retries`, `backoff_s`);
  404/401/403/410 are not. A partly received file is kept as `{asset}.tif.part` and resumed with an
  HTTP Range + If-Range request, on this attempt or on the next run, only while the server's version is
  the one it was started from (msgfm/ingest/fetch.py).
- Bounded: catalog documents and asset bodies are read within the `download` limits (time, bytes, depth);
  every ledger error passes through `redact` (no signed-URL secrets are stored).
- Verified: `file:size` and `file:checksum` (multihash) are checked before the atomic rename into
  place; a file that does not match is deleted, so nothing corrupt lands under its final name.
- Incremental: items whose ledger row is `ok`, whose files are all present and whose declared assets
  (`file:checksum`, `file:size`, the item's `updated` time: `item_fingerprint`) are unchanged are not
  touched (their bytes stay identical); failed items are tried again on every run, and an item the
  publisher changed (a re-rendered simulated world, a reprocessed scene) is fetched again.
- Windowed: an http(s) asset of an item whose AOI square was derived from its footprint is read by window,
  only the square plus `download.window_margin_m` (range requests; msgfm/ingest/window.py), when
  `download.windowed` is on; its `{asset}.window.json` makes a re-run skip a complete window.
- Untrusting: asset hrefs are never used as paths. Output names come from sanitised sensor, item
  id and asset key and must resolve inside `out_dir`; a local href must lie inside the catalog's
  folder, and a remote catalog may not point at local files. Such assets fail the item with a
  ledger error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from msgfm.cluster.tasks import map_ordered
from msgfm.config import DownloadParams, RayParams, SourceParams
from msgfm.geo.io import aoi_problem, atomic_path, atomic_write_json, environment_fault, inside, safe_name
from msgfm.ingest.convert import land
from msgfm.ingest.fetch import DownloadError, Fetcher
from msgfm.ingest.records import cloud_cover_above
from msgfm.ingest.redact import redact
from msgfm.ingest.sources import AssetRecord, ItemRecord, Signer, iter_items
from msgfm.ingest.window import fetch_window, window_square

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
    "level",
]


@dataclass
class DownloadSummary:
    """What one run did; also written to data/reports/download.json."""

    items: int
    fetched: int
    skipped: int
    failed: int
    duplicates: int
    bytes: int
    too_cloudy: int = 0
    """S2 items skipped because their eo:cloud_cover exceeds source.max_cloud_cover (a STAC API filters them itself)."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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
        "error": redact(error),  # every ledger error passes here: no signed-URL secrets stored
        "fingerprint": item_fingerprint(rec),
        "level": rec.level,
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


# --- items ---------------------------------------------------------------------------------------


def _fetch_item(rec: ItemRecord, out_dir: Path, fetcher: Fetcher) -> tuple[dict[str, Any], int]:
    """Fetch one item's wanted assets and write its item.json; return (ledger row, bytes written)."""
    if rec.error:
        return _ledger_row(rec, {}, "", rec.error), 0
    item_dir = out_dir / safe_name(rec.sensor or "unknown") / safe_name(rec.id)
    if not inside(item_dir, out_dir):
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
            if (square := window_square(rec, asset, fetcher.cfg)) is not None:
                nbytes, described = fetch_window(asset, dest, square, fetcher.cfg)
            else:
                nbytes, described = _fetch_asset(fetcher, asset, dest, rec.root)
            written += nbytes
        except DownloadError as e:
            errors.append(str(e))
            continue
        except OSError as e:
            if (fault := environment_fault(e, dest)) is not None:
                raise fault from e  # a full or read-only disk is not a property of this item
            errors.append(f"{key}: {e}")
            continue
        assets[key] = dest.relative_to(out_dir).as_posix()
        entry = dict(rec.item["assets"][key])
        entry["href"] = f"./{name}"
        local_item["assets"][key] = entry | described
    if errors:
        return _ledger_row(rec, assets, "", "; ".join(errors)), written
    item_path = item_dir / "item.json"
    atomic_write_json(item_path, local_item)
    return _ledger_row(rec, assets, item_path.relative_to(out_dir).as_posix(), ""), written


def _fetch_asset(fetcher: Fetcher, asset: AssetRecord, dest: Path, root: str | None) -> tuple[int, dict[str, Any]]:
    """Fetch one asset to `dest`, then land an S1/S2 file (msgfm.ingest.convert: one band, dB, reflectance x 10000).

    A band of a stacked file and linear S1 are fetched under a staging name, since they are always rewritten;
    other files are fetched in place (resumable as `{name}.part`) and rewritten only when they need it.
    Returns the bytes fetched and the asset fields that describe a rewritten file.
    """
    if asset.band is None and not asset.linear:
        written = fetcher.fetch(asset, dest, root)
        if asset.sensor not in ("s1", "s2"):
            return written, {}
        try:
            return written, land(dest, dest, asset)
        except DownloadError:
            dest.unlink(missing_ok=True)  # refused bytes never stay under the asset's final name
            raise
    staged = dest.with_name(f"{dest.stem}.source.tif")
    try:
        written = fetcher.fetch(asset, staged, root)
        described = land(staged, dest, asset)
    finally:
        staged.unlink(missing_ok=True)
    return written, described


def download(
    source: SourceParams,
    cfg: DownloadParams,
    *,
    report_path: str | Path | None = "data/reports/download.json",
    signer: Signer | None = None,
    progress: bool = True,
    ray_cfg: RayParams | None = None,
) -> DownloadSummary:
    """Fetch every acquisition not yet complete in the ledger; update the ledger; return what happened."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = {r["id"]: r for r in read_ledger(out_dir).to_dict(orient="records")}
    plan = _plan(source, signer, ledger, out_dir, cfg)
    skipped = plan.offered - len(plan.todo)
    log.info(
        "download: %d items offered, %d already in the ledger, %d to fetch (%d changed since fetched)",
        plan.offered,
        skipped,
        len(plan.todo),
        plan.changed,
    )
    if ray_cfg is not None and ray_cfg.data_workers > 1:
        results = map_ordered(
            _fetch_on_worker,
            [(rec, out_dir, cfg) for rec in plan.todo],
            workers=ray_cfg.data_workers,
            ray_cfg=ray_cfg,
            desc="download",
            progress=progress,
        )
        total_bytes, failed = _record_fetched(results, ledger)
    else:
        total_bytes, failed = _fetch_all(plan.todo, out_dir, cfg, ledger, progress)
    _write_ledger(out_dir, list(ledger.values()))
    summary = DownloadSummary(
        items=plan.offered,
        fetched=len(plan.todo) - failed,
        skipped=skipped,
        failed=failed,
        duplicates=plan.duplicates,
        bytes=total_bytes,
        too_cloudy=plan.too_cloudy,
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
    too_cloudy: int


def _plan(
    source: SourceParams, signer: Signer | None, ledger: dict[str, dict[str, Any]], out_dir: Path, cfg: DownloadParams
) -> _Plan:
    """List the source once: skip too cloudy S2, repeated ids and complete unchanged items; fail folder clashes."""
    todo: list[ItemRecord] = []
    seen: set[str] = set()
    folders: dict[str, str] = {}
    duplicates = changed = too_cloudy = 0
    for rec in iter_items(source, signer=signer, limits=cfg):
        cover = cloud_cover_above(rec, source.max_cloud_cover)
        if cover is not None:
            too_cloudy += 1
            log.info("item %s skipped: eo:cloud_cover %g > source.max_cloud_cover %g", rec.id, cover,
                     source.max_cloud_cover)  # fmt: skip
            continue
        if rec.id in seen:
            duplicates += 1
            log.warning("item %s is listed more than once by the source; the first listing is used", rec.id)
            continue
        seen.add(rec.id)
        folder = f"{safe_name(rec.sensor or 'unknown')}/{safe_name(rec.id)}"
        if folder in folders and not rec.error:
            rec.error = f"item id {rec.id!r} maps to the same folder as {folders[folder]!r} after sanitising"
        folders.setdefault(folder, rec.id)
        if not rec.error and aoi_problem(rec.aoi):
            rec.error = f"item {rec.id!r}: {aoi_problem(rec.aoi)}"
        if rec.id in ledger and _complete(ledger[rec.id], out_dir):
            if ledger[rec.id].get("fingerprint") == item_fingerprint(rec):
                continue
            changed += 1
        todo.append(rec)
    return _Plan(todo, len(seen), duplicates, changed, too_cloudy)


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
            nbytes, bad = _record_fetched([future.result()], ledger)
            total_bytes, failed = total_bytes + nbytes, failed + bad
            bar.update(1)
    return total_bytes, failed


def _fetch_on_worker(rec: ItemRecord, out_dir: Path, cfg: DownloadParams) -> tuple[dict[str, Any], int]:
    """One item fetched as a Ray task, with its own Fetcher (HTTP sessions do not travel between processes)."""
    return _fetch_item(rec, out_dir, Fetcher(cfg))


def _record_fetched(results: list[tuple[dict[str, Any], int]], ledger: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """Put fetched items' ledger rows in `ledger`, warning about failures; (bytes, failed items)."""
    total_bytes = failed = 0
    for row, nbytes in results:
        ledger[row["id"]] = row
        total_bytes += nbytes
        if row["status"] != "ok":
            failed += 1
            log.warning("%s: %s", row["id"], row["error"])
    return total_bytes, failed
