"""Bounded reads of untrusted catalog documents: a deadline, a byte cap, regular files only, no YAML alias bombs.

A hostile or broken catalog must not hang the download (a server that never finishes, a FIFO where a
file should be), exhaust memory (a huge document, a YAML alias bomb) or make a remote catalog read
local files. Every catalog, item and sidecar document is read here, within `download` params.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from msgfm.config import DownloadParams

MAX_YAML_ALIASES = 64
"""Aliases a sidecar may use; an alias bomb needs thousands (each alias may repeat a whole subtree)."""


class ReadRefused(ValueError):
    """A document was not read: too big, too slow, not a regular file, or too many YAML aliases."""


def is_url(href: str) -> bool:
    """True for http(s) and other remote schemes; False for local paths and file:// URLs."""
    scheme = urlparse(href).scheme
    return len(scheme) > 1 and scheme != "file"


def read_json(href: str, limits: DownloadParams) -> Any:
    """The JSON document at a URL or local path, read within `limits` (ReadRefused, OSError or ValueError)."""
    if is_url(href):
        return json.loads(_read_url(href, limits))
    return json.loads(read_local(Path(href.removeprefix("file://")), limits.max_json_bytes))


def read_yaml(path: Path, limits: DownloadParams) -> Any:
    """A YAML document from a local file with at most MAX_YAML_ALIASES aliases (safe types only)."""
    text = read_local(path, limits.max_json_bytes).decode("utf-8")
    aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
    if aliases > MAX_YAML_ALIASES:
        raise ReadRefused(f"{aliases} YAML aliases (at most {MAX_YAML_ALIASES}): an alias bomb is not expanded")
    return yaml.safe_load(text)


def read_local(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, at most `max_bytes`; a FIFO, device or socket is refused without opening it."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ReadRefused(f"{path} is not a regular file (a FIFO, device or socket); not read")
    if info.st_size > max_bytes:
        raise ReadRefused(f"{path} has {info.st_size} bytes, more than download.max_json_bytes ({max_bytes})")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ReadRefused(f"{path} grew past download.max_json_bytes ({max_bytes}) while being read")
    return data


def _read_url(href: str, limits: DownloadParams) -> bytes:
    """GET a document: each read within `timeout_s`, the whole within 4 x `timeout_s`, at most `max_json_bytes`."""
    import requests

    deadline = time.monotonic() + 4 * limits.timeout_s
    chunks: list[bytes] = []
    total = 0
    with requests.get(href, stream=True, timeout=limits.timeout_s) as r:
        r.raise_for_status()
        for block in r.iter_content(1 << 16):
            total += len(block)
            if total > limits.max_json_bytes:
                raise ReadRefused(f"document larger than download.max_json_bytes ({limits.max_json_bytes} bytes)")
            if time.monotonic() > deadline:
                raise ReadRefused(f"document still arriving after {4 * limits.timeout_s:g} s (4 x download.timeout_s)")
            chunks.append(block)
    return b"".join(chunks)
