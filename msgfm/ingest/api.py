"""A STAC API as a source: searched with pystac-client (collections, bbox, datetime), hrefs signed.

Planetary Computer's blob storage needs short-lived SAS tokens: `source.sign: planetary_computer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from msgfm.config import DownloadParams, SourceParams
from msgfm.ingest.aois import Square, aoi_name, overlapping, search_squares
from msgfm.ingest.records import ItemRecord, Signer, SourceError, record_from_item


def iter_api(cfg: SourceParams, signer: Signer, limits: DownloadParams) -> Iterator[ItemRecord]:
    """Search a STAC API with pystac-client and sign each item's hrefs; each request within `download.timeout_s`.

    A server that accepts the connection and never answers ends the search with a SourceError naming it.
    """
    import pystac_client
    from pystac_client.errors import ClientTypeError
    from pystac_client.exceptions import APIError, ParametersError
    from pystac_client.warnings import DoesNotConformTo

    try:
        squares = search_squares(cfg)
    except ValueError as e:
        raise SourceError(str(e)) from None
    try:
        client = pystac_client.Client.open(cfg.url, timeout=limits.timeout_s)
        for collections, query in _searches(cfg):
            search = client.search(
                collections=collections,
                bbox=cfg.bbox,
                datetime=cfg.datetime,
                max_items=cfg.max_items,
                query=query,
            )
            for page in search.pages_as_dicts():
                for feature in page.get("features", []):
                    rec = record_from_item(signer(feature), _self_href(feature, cfg.url), cfg)
                    yield from per_square(rec, squares, cfg)
    except DoesNotConformTo as e:
        raise SourceError(
            f"{cfg.url}: not a searchable STAC API ({e}); for a static catalog use source.kind: static"
        ) from None
    except (APIError, ParametersError, ClientTypeError, NotImplementedError, OSError, ValueError) as e:
        raise SourceError(
            f"{cfg.url}: STAC API search failed (each request may take download.timeout_s {limits.timeout_s:g} s): {e}"
        ) from None


def per_square(rec: ItemRecord, squares: list[Square], cfg: SourceParams) -> list[ItemRecord]:
    """One record per search square the item overlaps (msgfm.ingest.aois): the AOI, its square (the window read).

    An item in one square keeps its id; in several, each record's id gets the square's corner in km,
    `{id}_{E}_{N}`, so its files and ledger row are its own. An item with `msgfm:aoi`, an error or no
    overlap is left as it is.
    """
    if rec.error or rec.square is None:
        return [rec]
    found = overlapping(rec.bbox, squares)
    if not found:
        return [rec]
    if len(found) == 1:
        return [replace(rec, aoi=aoi_name(found[0], cfg), square=found[0])]
    return [
        replace(rec, id=f"{rec.id}_{sq[1][0] // 1000:.0f}_{sq[1][1] // 1000:.0f}", aoi=aoi_name(sq, cfg), square=sq)
        for sq in found
    ]


def _searches(cfg: SourceParams) -> list[tuple[list[str], dict[str, Any] | None]]:
    """(collections, query) of each search: with `max_cloud_cover`, S2 collections get an eo:cloud_cover query.

    One search for all would drop every S1 item, since a query on a property an item lacks excludes it.
    """
    everything = sorted({c for colls in cfg.collections.values() for c in colls})
    if cfg.max_cloud_cover is None or "s2" not in cfg.collections:
        return [(everything, None)]
    optical = sorted(cfg.collections["s2"])
    others = [c for c in everything if c not in optical]
    query = {"eo:cloud_cover": {"lte": cfg.max_cloud_cover}}
    return [(optical, query)] + ([(others, None)] if others else [])


def _self_href(item: dict[str, Any], fallback: str) -> str:
    for link in item.get("links", []):
        if link.get("rel") == "self" and link.get("href"):
            return link["href"]
    return fallback
