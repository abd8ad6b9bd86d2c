"""Where acquisitions come from: a static STAC catalog, a STAC API, or a folder of GeoTIFFs.

All three yield the same `ItemRecord`s (id, sensor, AOI, datetime, bbox, CRS, the assets to fetch
and the STAC item itself), so `msgfm.ingest.download` does not care where an item was found.

- static: a self-contained STAC catalog by path or URL (the simulated world writes one to
  data/source/catalog.json). Children and items are followed with pystac's I/O; items are kept
  as dicts so one malformed item becomes a failed ledger row instead of stopping the walk.
- stac_api: a STAC API searched with pystac-client (collections, bbox, datetime), with an
  optional href-signing hook: Planetary Computer's blob storage needs short-lived SAS tokens.
- folder: GeoTIFFs, each with a sidecar `NAME.json` or `NAME.yaml` giving at least `sensor` and
  `datetime` (optional: `id`, `asset`, `aoi`, `biome`); files sharing an `id` form one item.

Hrefs are resolved to absolute URLs or paths here; whether they may be read is decided in download.
Every document is read within the `download` limits (msgfm/ingest/reader.py: deadline, byte cap,
regular files only, YAML aliases); a static catalog's walk is bounded in depth and objects, and a
remote catalog's links may not lead to local files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from msgfm.config import DownloadParams, SourceParams
from msgfm.geo.io import inside
from msgfm.ingest.reader import ReadRefused, is_url, read_json, read_yaml
from msgfm.sensors import SENSORS, canonical_band

log = logging.getLogger(__name__)

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
    error: str = ""


def iter_items(
    cfg: SourceParams, *, signer: Signer | None = None, limits: DownloadParams | None = None
) -> Iterator[ItemRecord]:
    """Yield every acquisition the configured source offers, reading within `limits` (default: download's)."""
    limits = limits or DownloadParams()
    if cfg.kind == "static":
        yield from _iter_static(cfg, limits)
    elif cfg.kind == "stac_api":
        yield from _iter_api(cfg, signer if signer is not None else make_signer(cfg.sign))
    else:
        yield from _iter_folder(cfg, limits)


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


# --- records from STAC item dicts ----------------------------------------------------------------


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
        )
    bbox = item.get("bbox")
    return ItemRecord(
        id=item_id,
        sensor=sensor,
        aoi=str(props.get("msgfm:aoi") or cfg.aoi),  # the ledger's aoi column holds text; download checks the name
        biome=props.get("msgfm:biome"),
        datetime=props.get("datetime") or props.get("start_datetime"),
        bbox=[float(v) for v in bbox[:4]] if isinstance(bbox, list) and len(bbox) >= 4 else None,
        crs=_crs_of(props),
        assets=assets,
        item=item,
        root=root,
        collection=collection,
        error=error,
    )


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


def _sensor_of_collection(collection: str | None, cfg: SourceParams) -> str | None:
    for sensor, coll in cfg.collections.items():
        if coll == collection:
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
                    yield _failed(Path(target_abs).parent.name or target_abs, refused)
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
        return _failed(stem, f"cannot read item {target_abs}: {e}")
    return record_from_item(item, target_abs, cfg, root=root)


def _failed(item_id: str, error: str) -> ItemRecord:
    return ItemRecord(item_id, None, None, None, None, None, None, {}, {}, error=error)


# --- STAC API ------------------------------------------------------------------------------------


def _iter_api(cfg: SourceParams, signer: Signer) -> Iterator[ItemRecord]:
    """Search a STAC API with pystac-client and sign each item's hrefs."""
    import pystac_client
    from pystac_client.errors import ClientTypeError
    from pystac_client.exceptions import APIError, ParametersError
    from pystac_client.warnings import DoesNotConformTo

    try:
        client = pystac_client.Client.open(cfg.url)
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
        raise SourceError(f"{cfg.url}: STAC API search failed: {e}") from None


def _self_href(item: dict[str, Any], fallback: str) -> str:
    for link in item.get("links", []):
        if link.get("rel") == "self" and link.get("href"):
            return link["href"]
    return fallback


# --- folder of GeoTIFFs --------------------------------------------------------------------------


def _iter_folder(cfg: SourceParams, limits: DownloadParams) -> Iterator[ItemRecord]:
    """Group GeoTIFFs by their sidecar's id into items; a TIFF without a usable sidecar is a failed item."""
    folder = Path(cfg.path).resolve()  # type: ignore[arg-type]
    if not folder.is_dir():
        raise SourceError(f"{cfg.path}: source folder not found")
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for tif in sorted([*folder.rglob("*.tif"), *folder.rglob("*.tiff")]):
        if not tif.is_file():  # a FIFO would block the first reader forever; a folder is not an image
            yield _failed(tif.stem, f"{tif}: not a regular file (a FIFO, device, socket or folder); refused")
            continue
        sidecar, error = _read_sidecar(tif, limits)
        if error:
            yield _failed(tif.stem, error)
            continue
        groups.setdefault(str(sidecar.get("id") or tif.stem), []).append((tif, sidecar))
    for item_id, members in groups.items():
        yield _folder_record(item_id, members, folder, cfg)


def _read_sidecar(tif: Path, limits: DownloadParams) -> tuple[dict[str, Any], str]:
    import yaml

    for suffix in (".json", ".yaml", ".yml"):
        side = tif.with_suffix(suffix)
        if not side.exists():
            continue
        try:
            meta = read_json(str(side), limits) if suffix == ".json" else read_yaml(side, limits)
        except ReadRefused as e:
            return {}, f"{side}: sidecar refused: {e}"
        except (ValueError, yaml.YAMLError, UnicodeDecodeError, OSError, RecursionError) as e:
            return {}, f"{side}: sidecar is not valid {suffix[1:].upper()}: {e}"
        if not isinstance(meta, dict):
            return {}, f"{side}: sidecar must be a mapping with sensor and datetime"
        missing = [k for k in ("sensor", "datetime") if not meta.get(k)]
        if missing:
            return {}, f"{side}: sidecar lacks {', '.join(missing)}"
        return meta, ""
    return {}, f"{tif}: no sidecar {tif.stem}.json or {tif.stem}.yaml giving sensor and datetime"


def _folder_record(item_id: str, members: list[tuple[Path, dict[str, Any]]], folder: Path, cfg: SourceParams):
    """One STAC item dict for the GeoTIFFs of one sidecar id; CRS and bbox come from the first readable file."""
    meta = members[0][1]
    sensor = str(meta["sensor"])
    wanted = cfg.assets.get(sensor, [])
    assets = {}
    for tif, side in members:
        key = str(side.get("asset") or (wanted[0] if len(wanted) == 1 else tif.stem))
        assets[key] = {"href": str(tif), "type": "image/tiff; application=geotiff", "roles": ["data"]}
    props: dict[str, Any] = {"datetime": str(meta["datetime"]), "msgfm:sensor": sensor}
    if meta.get("aoi"):
        props["msgfm:aoi"] = str(meta["aoi"])
    if meta.get("biome"):
        props["msgfm:biome"] = str(meta["biome"])
    bbox, crs = _raster_footprint([m[0] for m in members])
    if crs:
        props["proj:code"] = crs
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "geometry": _bbox_polygon(bbox),
        "bbox": bbox,
        "properties": props,
        "assets": assets,
        "links": [],
    }
    return record_from_item(item, str(folder / "sidecar.json"), cfg, root=str(folder))


def _raster_footprint(paths: list[Path]) -> tuple[list[float] | None, str | None]:
    import rasterio
    from rasterio.warp import transform_bounds

    for path in paths:
        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    continue
                crs = src.crs.to_string()
                bbox = list(transform_bounds(src.crs, "EPSG:4326", *src.bounds))
                return [float(v) for v in bbox], crs
        except rasterio.errors.RasterioError:
            continue
    return None, None


def _bbox_polygon(bbox: list[float] | None) -> dict[str, Any] | None:
    if bbox is None:
        return None
    w, s, e, n = bbox
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
