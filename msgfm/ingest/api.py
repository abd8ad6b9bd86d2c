"""A STAC API as a source: searched with pystac-client (collections, bbox, datetime), hrefs signed.

Planetary Computer's blob storage needs short-lived SAS tokens: `source.sign: planetary_computer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from msgfm.config import DownloadParams, SourceParams
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
                    yield record_from_item(signer(feature), _self_href(feature, cfg.url), cfg)
    except DoesNotConformTo as e:
        raise SourceError(
            f"{cfg.url}: not a searchable STAC API ({e}); for a static catalog use source.kind: static"
        ) from None
    except (APIError, ParametersError, ClientTypeError, NotImplementedError, OSError, ValueError) as e:
        raise SourceError(
            f"{cfg.url}: STAC API search failed (each request may take download.timeout_s {limits.timeout_s:g} s): {e}"
        ) from None


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
