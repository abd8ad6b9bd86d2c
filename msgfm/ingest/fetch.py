"""Fetching one asset into place: a local copy or HTTP with Range resume, retried, verified against the item.

`Fetcher.fetch` writes the file atomically under its final name only after `file:size` and
`file:checksum` (multihash) match; a partial HTTP body stays as `{name}.part` and is resumed.
Beside it `{name}.part.json` records the server's validator (ETag / Last-Modified) and size from when the
partial file was started; a resume sends `If-Range` with it and restarts from zero when the server's
version changed (a 200 answer, another validator or size), so a file is never spliced from two versions.
A `.part` without such a record is not resumed.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from msgfm.config import DownloadParams
from msgfm.geo.io import atomic_path, atomic_write_json, inside
from msgfm.ingest.redact import redact
from msgfm.ingest.sources import AssetRecord, is_url

log = logging.getLogger(__name__)
T = TypeVar("T")

_NO_RETRY_STATUS = {400, 401, 403, 404, 405, 410, 451}
_CHUNK = 1 << 16

_MULTIHASH = {"12": ("sha256", 32), "13": ("sha512", 64), "11": ("sha1", 20), "d501": ("md5", 16)}


class DownloadError(RuntimeError):
    """One asset could not be fetched or verified; the message names the asset and the reason."""


class _Retryable(DownloadError):
    """A transient failure (timeout, dropped connection, 5xx, 429) worth another attempt."""


def with_retries(
    call: Callable[[], T], cfg: DownloadParams, key: str, retryable: tuple[type[Exception], ...], what: str
) -> T:
    """`call()`, tried `download.retries` more times with exponential backoff (`backoff_s`) while it raises one
    of `retryable`; then a DownloadError naming `key`, `what` was tried and the last (redacted) reason."""
    attempts, last = cfg.retries + 1, ""
    for attempt in range(attempts):
        try:
            return call()
        except retryable as e:
            last = redact(str(e))  # the reason phrase is the server's text
        if attempt + 1 < attempts:
            delay = cfg.backoff_s * 2**attempt
            log.info("%s: %s; retry %d/%d in %.1f s", key, last, attempt + 1, cfg.retries, delay)
            time.sleep(delay)
    raise DownloadError(f"{key}: {what}gave up after {attempts} attempts: {last}")


class VerifyError(DownloadError):
    """The fetched bytes are not what the item declares (size or checksum)."""


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
                only = "(http, https or local files only)"
                raise DownloadError(f"{asset.key}: unsupported href scheme in {href} {only}{_why(href)}")
            return self._fetch_http(asset, dest)
        return self._copy_local(asset, dest, root)

    def _copy_local(self, asset: AssetRecord, dest: Path, root: str | None) -> int:
        src = Path(asset.href.removeprefix("file://"))
        if root is None:
            raise DownloadError(f"{asset.key}: local href {asset.href} in a remote source is refused")
        if not inside(src, Path(root)):
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

        def attempt() -> int:
            self._get(asset, part)
            got = part.stat().st_size
            if asset.size is not None and got < asset.size:
                raise _Retryable(f"incomplete: {got} of {asset.size} bytes")
            try:
                _verify(part, asset)
            except VerifyError:
                _discard(part)  # corrupt or from a changed source: never resume from it
                raise
            os.replace(part, dest)
            _record_path(part).unlink(missing_ok=True)
            return got

        return with_retries(attempt, self.cfg, asset.key, (_Retryable, VerifyError), "")

    def _get(self, asset: AssetRecord, part: Path) -> None:
        """One GET into `part`, resuming with Range + If-Range when a partial file of the same version exists."""
        import requests
        import urllib3

        have, record = _resumable(part, asset)
        if asset.size is not None and have == asset.size:
            return  # complete from an earlier attempt; verification decides
        headers = {"Range": f"bytes={have}-", "If-Range": record.get("etag") or record["last_modified"]} if have else {}
        url = asset.href
        try:
            with self._session().get(url, headers=headers, stream=True, timeout=self.cfg.timeout_s) as r:
                self._check_status(r, asset, part, have)
                if have and r.status_code == 206:
                    _check_same_version(r, record, part, have)
                elif have:
                    log.info("%s: the server sent the whole file (changed since the partial one); restarting", part)
                if r.status_code != 206:
                    _write_record(part, r)
                mode = "ab" if r.status_code == 206 else "wb"
                cap = asset.size if asset.size is not None else self.cfg.max_asset_bytes
                self._write_body(r, part, mode, url, cap - (have if mode == "ab" else 0), asset.key)
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            raise _Retryable(f"timed out after {self.cfg.timeout_s} s reading {redact(url)}") from None
        except (requests.ConnectionError, urllib3.exceptions.HTTPError, ConnectionError) as e:
            got = part.stat().st_size if part.is_file() else 0
            raise _Retryable(
                f"connection lost with {got} bytes of {redact(url)} received ({type(e).__name__})"
            ) from None

    @staticmethod
    def _check_status(r, asset: AssetRecord, part: Path, have: int) -> None:  # noqa: ANN001 - a requests.Response
        """Raise for an HTTP error: permanent ones fail the asset, others are retried; a refused range restarts."""
        if r.status_code == 416 and have:
            _discard(part)
            raise _Retryable(f"server refused the resume range at byte {have}; restarting")
        if r.status_code in _NO_RETRY_STATUS:
            raise DownloadError(f"{asset.key}: HTTP {r.status_code} {r.reason} for {redact(r.url)}")
        if r.status_code >= 400:
            raise _Retryable(f"HTTP {r.status_code} {r.reason} for {redact(r.url)}")

    @staticmethod
    def _write_body(r, part: Path, mode: str, url: str, cap: int, key: str) -> None:  # noqa: ANN001 - a Response
        """Stream at most `cap` bytes into `part`; shorter than announced is retryable (the bytes are kept)."""
        announced = int(r.headers.get("Content-Length") or -1)
        received = 0
        with open(part, mode) as f:
            # read1 hands over whatever arrived, so a dropped connection keeps every received byte
            while block := r.raw.read1(_CHUNK, decode_content=True):
                received += len(block)
                if received > cap or announced > cap:
                    f.close()
                    _discard(part)
                    raise DownloadError(
                        f"{key}: the server sends more than the {cap} bytes expected (file:size, or "
                        f"download.max_asset_bytes when none is declared) for {redact(url)}; aborted"
                    )
                f.write(block)
        if 0 <= received < announced:
            raise _Retryable(f"connection closed after {received} of {announced} bytes of {redact(url)}")


# --- resume records ------------------------------------------------------------------------------


def _record_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _discard(part: Path) -> None:
    """Remove a partial file and its record: the next attempt starts from zero."""
    part.unlink(missing_ok=True)
    _record_path(part).unlink(missing_ok=True)


def _validators(headers) -> dict[str, Any]:  # noqa: ANN001 - a case-insensitive header mapping
    """The response's strong ETag and Last-Modified (weak ETags cannot guard a byte range)."""
    etag = headers.get("ETag") or ""
    found: dict[str, Any] = {"etag": etag} if etag and not etag.startswith("W/") else {}
    if headers.get("Last-Modified"):
        found["last_modified"] = headers["Last-Modified"]
    return found


def _write_record(part: Path, r) -> None:  # noqa: ANN001 - a requests.Response
    """Record the version a fresh partial file comes from; without a validator there is nothing to resume against."""
    found = _validators(r.headers)
    if not found:
        _record_path(part).unlink(missing_ok=True)
        return
    length = r.headers.get("Content-Length")
    atomic_write_json(_record_path(part), {**found, "size": int(length) if length and length.isdigit() else None})


def _resumable(part: Path, asset: AssetRecord) -> tuple[int, dict[str, Any]]:
    """Bytes of `part` that may be resumed, with its record; (0, {}) after discarding what may not."""
    have = part.stat().st_size if part.is_file() else 0
    try:
        record = json.loads(_record_path(part).read_text()) if have else {}
    except (OSError, ValueError):
        record = {}
    usable = isinstance(record, dict) and (record.get("etag") or record.get("last_modified"))
    if have and (not usable or (asset.size is not None and have > asset.size)):
        _discard(part)  # unknown version (no record) or longer than the file: never splice
        return 0, {}
    return have, record if have else {}


def _check_same_version(r, record: dict[str, Any], part: Path, have: int) -> None:  # noqa: ANN001 - a Response
    """Raise (discarding `part`) when a 206 answer is not the rest of the version `part` was started from."""
    now = _validators(r.headers)
    changed = [k for k in ("etag", "last_modified") if k in now and record.get(k) and now[k] != record[k]]
    total = r.headers.get("Content-Range", "").rpartition("/")[2]
    if record.get("size") is not None and total.isdigit() and int(total) != record["size"]:
        changed.append("size")
    if _range_start(r) != have or changed:
        _discard(part)
        what = ", ".join(changed) or f"offset (asked for byte {have})"
        raise _Retryable(f"the server's file changed since the partial download began ({what}); restarting")


def _range_start(response) -> int:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else -1


def _why(href: str) -> str:
    """What an s3:// href means: a bucket read with AWS credentials (Earth Search's S1 GRD is requester-pays)."""
    if urlparse(href).scheme.lower() != "s3":
        return ""
    return (
        "; s3:// is an AWS bucket read with credentials (Earth Search's sentinel-1-grd lies in the requester-pays "
        "bucket sentinel-s1-l1c, as uncalibrated GRD in radar geometry); use an https catalog such as "
        "Planetary Computer's sentinel-1-rtc"
    )
