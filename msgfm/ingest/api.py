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
        search = client.search(
            collections=sorted(set(cfg.collections.values())),
            bbox=cfg.bbox,
            datetime=cfg.datetime,
            max_items=cfg.max_items,
        )
        pages = search.pages_as_dicts()
        for page in pages:
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


def _self_href(item: dict[str, Any], fallback: str) -> str:
    for link in item.get("links", []):
        if link.get("rel") == "self" and link.get("href"):
            return link["href"]
    return fallback
