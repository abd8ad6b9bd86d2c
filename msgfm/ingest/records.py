"""What every source yields: an `ItemRecord` per acquisition, built from a STAC item dict.

The item's asset keys are renamed to the registry's band names here (msgfm.sensors.canonical_band:
`vv` -> `VV`, `blue` -> `B02`), so download, the gates and coregister all see one name per band; the
AOI of an item without `msgfm:aoi` is derived from its footprint (msgfm.ingest.aois).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from msgfm.config import SourceParams
from msgfm.ingest.aois import Square, aoi_name, aoi_square
from msgfm.ingest.reader import is_url
from msgfm.sensors import SENSORS, SENTINEL2, canonical_band

KNOWN_SENSORS = (*SENSORS, "landcover")
"""Sensors an item may belong to: the four of the registry plus the land-cover label source."""

Signer = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns a STAC item dict into one whose asset hrefs can be fetched (for example with SAS tokens)."""


class SourceError(RuntimeError):
    """The source as a whole cannot be read (catalog or API unreachable, folder missing)."""


@dataclass(frozen=True)
class AssetRecord:
    """One asset to fetch: absolute href and what the publisher says its bytes are."""

    key: str
    href: str
    size: int | None = None
    checksum: str | None = None
    """`file:checksum` multihash (hex), for example `1220` + SHA-256."""
    band: int | None = None
    """`msgfm:band`: the asset is this 1-based band of a stacked file; download extracts it into its own file."""
    linear: bool = False
    """S1 backscatter in linear power (declared or by collection): download converts it to dB."""
    sensor: str | None = None
    s2_scaling: tuple[float | None, float] | None = None
    """An S2 band's (gain, bias) to reflectance x 10000 (gain None: by the file's type); None: not an S2 band."""


@dataclass
class ItemRecord:
    """One acquisition as every source reports it; `error` is set when the item itself is unusable."""

    id: str
    sensor: str | None
    aoi: str | None
    biome: str | None
    datetime: str | None
    """As published (RFC 3339 text); parsed by download and checked by the raw gate."""
    bbox: list[float] | None
    crs: str | None
    assets: dict[str, AssetRecord]
    item: dict[str, Any]
    """The STAC item dict with absolute asset hrefs."""
    root: str | None = None
    """For local sources: the folder all asset files must lie in."""
    collection: str | None = None
    level: str | None = None
    """Product level (S2: L1C or L2A), from `product_level`; None when nothing says."""
    square: Square | None = None
    """The derived AOI's UTM square (msgfm.ingest.aois), the window read of a remote COG; None: `msgfm:aoi` or none."""
    error: str = ""


def record_from_item(
    item: dict[str, Any],
    base_href: str,
    cfg: SourceParams,
    *,
    root: str | None = None,
) -> ItemRecord:
    """Build an ItemRecord from a STAC item dict whose relative hrefs are relative to `base_href`."""
    from pystac.utils import make_absolute_href

    item_id = str(item.get("id") or "")
    props = item.get("properties") or {}
    collection = item.get("collection")
    sensor = props.get("msgfm:sensor") or _sensor_of_collection(collection, cfg)
    error = ""
    if not item_id:
        error = f"item at {base_href} has no id"
        item_id = Path(urlparse(base_href).path).stem or "unnamed"
    elif sensor is None:
        error = (
            f"cannot tell the sensor of item {item_id}: no msgfm:sensor property and collection "
            f"{collection!r} is not in source.collections"
        )
    elif sensor not in KNOWN_SENSORS:
        error = f"item {item_id} has unknown sensor {sensor!r}; known: {list(KNOWN_SENSORS)}"

    item = json.loads(json.dumps(item))  # a private copy whose hrefs and asset keys we rewrite
    if sensor:
        item["assets"] = canonical_assets(sensor, item.get("assets"))
    wanted = set(cfg.assets.get(sensor, [])) if sensor else set()
    assets: dict[str, AssetRecord] = {}
    for key, asset in (item.get("assets") or {}).items():
        href = asset.get("href")
        if not isinstance(href, str) or not href:
            continue
        absolute = href if is_url(href) else make_absolute_href(href, base_href)
        asset["href"] = absolute
        size = asset.get("file:size")
        if key not in wanted:
            continue
        assets[key] = AssetRecord(
            key=key,
            href=absolute,
            size=int(size) if isinstance(size, int | float) else None,
            checksum=asset.get("file:checksum") if isinstance(asset.get("file:checksum"), str) else None,
            band=asset["msgfm:band"] if isinstance(asset.get("msgfm:band"), int) else None,
            linear=sensor == "s1" and is_linear(asset, collection),
            sensor=sensor,
            s2_scaling=s2_scaling(asset, props) if sensor == "s2" and key in SENTINEL2.band_names else None,
        )
    if not error and wanted and not assets:
        found = sorted(k for k, a in (item.get("assets") or {}).items() if isinstance(a, dict) and a.get("href"))
        error = (
            f"item {item_id}: none of the wanted asset keys {sorted(wanted)} (source.assets.{sensor}) is among "
            f"its assets {found}"
        )
    bbox = item.get("bbox")
    bbox_4326 = [float(v) for v in bbox[:4]] if isinstance(bbox, list) and len(bbox) >= 4 else None
    square = None if props.get("msgfm:aoi") else aoi_square(bbox_4326, cfg)
    return ItemRecord(
        id=item_id,
        sensor=sensor,
        aoi=str(props.get("msgfm:aoi") or aoi_name(square, cfg)),  # text; download checks the name
        biome=props.get("msgfm:biome"),
        datetime=props.get("datetime") or props.get("start_datetime"),
        bbox=bbox_4326,
        crs=_crs_of(props),
        assets=assets,
        item=item,
        root=root,
        collection=collection,
        level=product_level(sensor, collection, props, item_id),
        square=square,
        error=error,
    )


LINEAR_S1_COLLECTIONS = ("sentinel-1-rtc",)
"""S1 collections whose assets are linear power (gamma0) unless their `raster:bands` unit says otherwise."""


def is_linear(asset: dict[str, Any], collection: str | None) -> bool:
    """True when an S1 asset holds linear power: its `raster:bands` unit says so, or, undeclared, its collection."""
    bands = asset.get("raster:bands")
    unit = bands[0].get("unit") if isinstance(bands, list) and bands and isinstance(bands[0], dict) else None
    if isinstance(unit, str) and unit.strip():
        return unit.strip().lower() in ("linear", "linear power", "power", "amplitude squared", "1")
    return collection in LINEAR_S1_COLLECTIONS


HARMONISED_FLAGS = ("earthsearch:boa_offset_applied",)
"""Item properties saying a publisher already removed the baseline-04.00 offset from the pixels."""


def s2_scaling(asset: dict[str, Any], props: dict[str, Any]) -> tuple[float | None, float]:
    """(gain, bias) taking an S2 band asset's values to reflectance x 10000 (the registry's unit and old baselines).

    Gain: the `raster:bands` scale x 10000 (0.0001 -> 1), None when undeclared (decided by the file's type).
    Bias: the declared offset x 10000 (Earth Search declares -0.1 -> -1000); undeclared or zero, -1000 for
    `s2:processing_baseline` 04.00 and later (the BOA_ADD_OFFSET / RADIO_ADD_OFFSET of ESA's products)
    unless the item says the offset was already applied.
    """
    bands = asset.get("raster:bands")
    band = bands[0] if isinstance(bands, list) and bands and isinstance(bands[0], dict) else {}
    scale, offset = band.get("scale"), band.get("offset")
    gain = float(scale) * 10000.0 if isinstance(scale, int | float) and scale > 0 else None
    bias = float(offset) * 10000.0 if isinstance(offset, int | float) else 0.0
    if bias == 0.0 and _baseline(props) >= 4.0 and not any(props.get(f) is True for f in HARMONISED_FLAGS):
        bias = -1000.0
    return gain, bias


def _baseline(props: dict[str, Any]) -> float:
    """`s2:processing_baseline` ("05.09") as a number; 0 when absent or unreadable (older products)."""
    try:
        return float(str(props.get("s2:processing_baseline") or 0))
    except ValueError:
        return 0.0


def canonical_assets(sensor: str, assets: Any) -> dict[str, Any]:
    """An item's assets keyed by the registry's band names (`vv` -> `VV`, `blue` -> `B02`, `scl` -> `SCL`).

    A key that is already the canonical name wins over an alias of the same band; a later alias keeps its
    own key (so it is not fetched twice). Each renamed asset remembers its catalog key in `msgfm:key`.
    """
    if not isinstance(assets, dict):
        return {}
    entries = [(k, a, canonical_band(sensor, k, a if isinstance(a, dict) else None)) for k, a in assets.items()]
    out: dict[str, Any] = {}
    for key, asset, canon in sorted(entries, key=lambda e: e[0] != e[2]):  # exact names first, stable
        if canon in out or canon == key:
            out.setdefault(key, asset)
            continue
        out[canon] = {**asset, "msgfm:key": key} if isinstance(asset, dict) else asset
    return out


S2_PRODUCT_TYPES = {"S2MSI1C": "L1C", "S2MSI2A": "L2A"}
"""`s2:product_type` values (ESA's product types) -> product level."""


def product_level(sensor: str | None, collection: str | None, props: dict[str, Any], item_id: str) -> str | None:
    """An S2 item's product level, L1C or L2A: `s2:product_type`, `processing:level`, else the collection or id."""
    if sensor != "s2":
        return None
    level = S2_PRODUCT_TYPES.get(str(props.get("s2:product_type") or "").upper())
    declared = str(props.get("processing:level") or "").upper()
    if level is None and declared in ("L1C", "L2A"):
        level = declared
    for text in [] if level else [collection or "", item_id]:
        found = [lv for lv in ("L1C", "L2A") if lv in text.upper()]
        if len(found) == 1:
            return found[0]
    return level


def _sensor_of_collection(collection: str | None, cfg: SourceParams) -> str | None:
    for sensor, colls in cfg.collections.items():
        if collection in colls:
            return sensor
    return None


def _crs_of(props: dict[str, Any]) -> str | None:
    if props.get("proj:code"):
        return str(props["proj:code"])
    if props.get("proj:epsg"):
        return f"EPSG:{int(props['proj:epsg'])}"
    if props.get("proj:wkt2"):
        return str(props["proj:wkt2"])
    return None


def cloud_cover_above(rec: ItemRecord, max_cloud_cover: float | None) -> float | None:
    """The `eo:cloud_cover` of an S2 item when it exceeds `max_cloud_cover` (source.max_cloud_cover), else None."""
    cover = (rec.item.get("properties") or {}).get("eo:cloud_cover")
    if max_cloud_cover is None or rec.sensor != "s2" or not isinstance(cover, int | float):
        return None
    return float(cover) if cover > max_cloud_cover else None


def failed_record(item_id: str, error: str) -> ItemRecord:
    """The record of an item that cannot be used at all: its id and why."""
    return ItemRecord(item_id, None, None, None, None, None, None, {}, {}, error=error)
