"""Where acquisitions come from: a static STAC catalog, a STAC API, or a folder of GeoTIFFs.

All three yield the same `ItemRecord`s (msgfm/ingest/records.py: id, sensor, AOI, datetime, bbox, CRS,
the assets to fetch and the STAC item itself), so `msgfm.ingest.download` does not care where an item
was found.

- static: a self-contained STAC catalog by path or URL (the simulated world writes one to
  data/source/catalog.json). Children and items are followed with pystac's I/O; items are kept
  as dicts so one malformed item becomes a failed ledger row instead of stopping the walk.
- stac_api (msgfm/ingest/api.py): a STAC API searched with pystac-client (collections, bbox,
  datetime), with an optional href-signing hook (Planetary Computer's SAS tokens).
- folder (msgfm/ingest/folder.py): GeoTIFFs, each with a sidecar `NAME.json` or `NAME.yaml` giving at
  least `sensor` and `datetime` (optional: `id`, `asset`, `aoi`, `biome`, `bands`,
  `cloud_cover`); files sharing an `id` form one item.

Hrefs are resolved to absolute URLs or paths here; whether they may be read is decided in download.
Every document is read within the `download` limits (msgfm/ingest/reader.py: deadline, byte cap,
regular files only, YAML aliases); a static catalog's walk is bounded in depth and objects, and a
remote catalog's links may not lead to local files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from msgfm.config import DownloadParams, SourceParams
from msgfm.geo.io import inside
from msgfm.ingest.aois import footprint, group_names, group_square, overlap_groups
from msgfm.ingest.reader import is_url, read_json
from msgfm.ingest.records import (
    KNOWN_SENSORS,
    AssetRecord,
    ItemRecord,
    Signer,
    SourceError,
    canonical_assets,
    failed_record,
    record_from_item,
)

log = logging.getLogger(__name__)


def iter_items(
    cfg: SourceParams, *, signer: Signer | None = None, limits: DownloadParams | None = None
) -> Iterator[ItemRecord]:
    """Yield every acquisition the configured source offers, reading within `limits` (default: download's)."""
    from msgfm.ingest.api import iter_api
    from msgfm.ingest.folder import iter_folder

    limits = limits or DownloadParams()
    if cfg.kind == "stac_api":
        records = iter_api(cfg, signer if signer is not None else make_signer(cfg.sign), limits)
        yield from records if cfg.bbox is not None else grouped_by_overlap(list(records), cfg)
    else:
        records = _iter_static(cfg, limits) if cfg.kind == "static" else iter_folder(cfg, limits)
        yield from grouped_by_overlap(list(records), cfg)


def grouped_by_overlap(records: list[ItemRecord], cfg: SourceParams) -> list[ItemRecord]:
    """The records with each derived AOI (no `msgfm:aoi`) replaced by its group's: footprint polygons that overlap."""
    derived = [i for i, r in enumerate(records) if r.square is not None and not r.error and r.bbox is not None]
    shapes = [footprint(records[i].item.get("geometry"), records[i].bbox, cfg.bbox) for i in derived]  # type: ignore[arg-type]
    groups = overlap_groups(shapes)
    bboxes = [list(s.bounds) for s in shapes]
    members: dict[int, list[list[float]]] = {}
    for g, bbox in zip(groups, bboxes, strict=True):
        members.setdefault(g, []).append(bbox)
    squares = [group_square(members[g]) for g in range(len(members))]
    names = group_names(squares, cfg)
    out = list(records)
    for i, g in zip(derived, groups, strict=True):
        out[i] = replace(records[i], aoi=names[g], square=squares[g])
    return out


def make_signer(name: str) -> Signer:
    """The href-signing hook named in params (`source.sign`)."""
    if name == "none":
        return lambda item: item
    if name == "planetary_computer":

        def sign(item: dict[str, Any]) -> dict[str, Any]:
            import planetary_computer

            return planetary_computer.sign(item)

        return sign
    raise ValueError(f"unknown source.sign {name!r}; use none or planetary_computer")


# --- static catalog ------------------------------------------------------------------------------


def _iter_static(cfg: SourceParams, limits: DownloadParams) -> Iterator[ItemRecord]:
    """Walk a static catalog (path or URL) breadth-first, reading items as plain dicts, within `limits`."""
    href = cfg.href
    if not is_url(href):
        path = Path(href.removeprefix("file://")).resolve()
        if not path.is_file():
            raise SourceError(f"{href}: STAC catalog not found (run `msgfm simulate` or set source.href)")
        href = str(path)
    root = None if is_url(href) else str(Path(href).parent)
    seen: set[str] = set()
    queue = [(href, 0)]
    while queue:
        cat_href, depth = queue.pop(0)
        if cat_href in seen:
            continue
        seen.add(cat_href)
        _within_limits(href, depth, len(seen), limits)
        try:
            cat = read_json(cat_href, limits)
        except Exception as e:  # any I/O or JSON failure: name the file
            if cat_href == href:
                raise SourceError(f"{cat_href}: cannot read STAC catalog: {e}") from None
            log.warning("%s: cannot read child catalog, skipped: %s", cat_href, e)
            continue
        for rel, target_abs, refused in _links(cat, cat_href, root):
            if refused:  # a remote catalog's local link, or a local catalog's link out of its folder: never read
                if rel == "item":
                    yield failed_record(Path(target_abs).parent.name or target_abs, refused)
                else:
                    log.warning("%s", refused)
                continue
            if rel == "child":
                queue.append((target_abs, depth + 1))
                continue
            seen.add(target_abs)
            _within_limits(href, depth, len(seen), limits)
            yield _read_item(target_abs, cfg, root, limits)


def _links(cat: Any, cat_href: str, root: str | None) -> Iterator[tuple[str, str, str]]:
    """(rel, absolute href, why it is refused or "") of a catalog's child and item links.

    A remote catalog may not lead to this machine's files; a local one may not lead out of its folder
    (`../../home/...`, absolute paths, symlinks out), so a catalog cannot make download read other files.
    """
    from pystac.utils import make_absolute_href

    links = cat.get("links", []) if isinstance(cat, dict) else []
    for link in links if isinstance(links, list) else []:
        rel, target = (link.get("rel"), link.get("href")) if isinstance(link, dict) else (None, None)
        if not isinstance(target, str) or not target or rel not in ("child", "item"):
            continue
        target_abs = target if is_url(target) else make_absolute_href(target, cat_href)
        remote = urlparse(target_abs).scheme.lower() in ("http", "https")
        refused = ""
        if root is None and not remote:
            refused = f"{rel} link {target_abs} of remote catalog {cat_href} leads to a local file; refused"
        elif root is not None and not remote and not inside(Path(target_abs.removeprefix("file://")), Path(root)):
            refused = f"{rel} link {target_abs} of {cat_href} points outside the catalog folder {root}; refused"
        yield rel, target_abs, refused


def _within_limits(href: str, depth: int, objects: int, limits: DownloadParams) -> None:
    """Stop a walk that goes deeper or reads more documents than the download limits allow."""
    if depth > limits.max_catalog_depth:
        raise SourceError(
            f"{href}: catalog nests deeper than download.max_catalog_depth ({limits.max_catalog_depth}); refused"
        )
    if objects > limits.max_catalog_objects:
        raise SourceError(
            f"{href}: catalog has more than download.max_catalog_objects ({limits.max_catalog_objects}) "
            "catalogs and items; refused"
        )


def _read_item(target_abs: str, cfg: SourceParams, root: str | None, limits: DownloadParams) -> ItemRecord:
    """The item at `target_abs` as a record, or a failed record naming it when it cannot be read."""
    try:
        item = read_json(target_abs, limits)
    except Exception as e:
        stem = Path(urlparse(target_abs).path).parent.name or target_abs
        return failed_record(stem, f"cannot read item {target_abs}: {e}")
    return record_from_item(item, target_abs, cfg, root=root)


__all__ = [
    "KNOWN_SENSORS",
    "AssetRecord",
    "ItemRecord",
    "Signer",
    "SourceError",
    "canonical_assets",
    "is_url",
    "iter_items",
    "make_signer",
    "record_from_item",
]
