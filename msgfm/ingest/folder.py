"""A folder of GeoTIFFs as a source: each file with a sidecar `NAME.json` or `NAME.yaml`.

The sidecar gives at least `sensor` and `datetime` (optional: `id`, `asset`, `aoi`, `biome`, `bands`,
`cloud_cover` in percent, read as eo:cloud_cover, `level`: L1C or L2A); files sharing an `id` form one
item. A multi-band S1/S2 file (SEN12MS, Sen1Floods11) gives one asset per band (`msgfm:band`, its 1-based
index), named by `bands:`, the file's band descriptions or the publisher's order. Sidecars are read within
the `download` limits (msgfm/ingest/reader.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from msgfm.config import DownloadParams, SourceParams
from msgfm.ingest.reader import ReadRefused, read_json, read_yaml
from msgfm.ingest.records import ItemRecord, SourceError, failed_record, record_from_item
from msgfm.sensors import SENSORS, canonical_band


def iter_folder(cfg: SourceParams, limits: DownloadParams) -> Iterator[ItemRecord]:
    """Group GeoTIFFs by their sidecar's id into items; a TIFF without a usable sidecar is a failed item."""
    folder = Path(cfg.path).resolve()  # type: ignore[arg-type]
    if not folder.is_dir():
        raise SourceError(f"{cfg.path}: source folder not found")
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for tif in sorted([*folder.rglob("*.tif"), *folder.rglob("*.tiff")]):
        if not tif.is_file():  # a FIFO would block the first reader forever; a folder is not an image
            yield failed_record(tif.stem, f"{tif}: not a regular file (a FIFO, device, socket or folder); refused")
            continue
        sidecar, error = _read_sidecar(tif, limits)
        if error:
            yield failed_record(tif.stem, error)
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
    assets: dict[str, Any] = {}
    for tif, side in members:
        entry = {"href": str(tif), "type": "image/tiff; application=geotiff", "roles": ["data"]}
        names, error = stacked_band_names(tif, sensor, side)
        if error:
            return failed_record(item_id, error)
        if names:  # a stacked file (SEN12MS, Sen1Floods11): one asset per band, extracted by download
            assets |= {name: {**entry, "msgfm:band": i} for i, name in enumerate(names, start=1)}
            continue
        assets[str(side.get("asset") or (wanted[0] if len(wanted) == 1 else tif.stem))] = entry
    props: dict[str, Any] = {"datetime": str(meta["datetime"]), "msgfm:sensor": sensor}
    if meta.get("aoi"):
        props["msgfm:aoi"] = str(meta["aoi"])
    if meta.get("biome"):
        props["msgfm:biome"] = str(meta["biome"])
    if meta.get("level"):
        props["processing:level"] = str(meta["level"])
    if isinstance(meta.get("cloud_cover"), int | float):
        props["eo:cloud_cover"] = float(meta["cloud_cover"])
    bbox, geometry, crs = _raster_footprint([m[0] for m in members])
    if crs:
        props["proj:code"] = crs
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "assets": assets,
        "links": [],
    }
    return record_from_item(item, str(folder / "sidecar.json"), cfg, root=str(folder))


def stacked_band_names(tif: Path, sensor: str, side: dict[str, Any]) -> tuple[list[str], str]:
    """The band names of a multi-band file of a band-split sensor (S1, S2), and why not ('' when known).

    From the sidecar's `bands:` list, else the file's band descriptions, else the publisher's order when the
    file has all the sensor's bands (SEN12MS and Sen1Floods11 store S1 as VV, VH and S2 as B01 ... B12 with
    B8A after B08: the registry's order). ([], '') for a one-band file, another sensor, or an `asset:` key.
    """
    import rasterio

    spec = SENSORS.get(sensor)
    if spec is None or len(spec.bands) < 2 or side.get("asset"):
        return [], ""
    try:
        with rasterio.open(tif) as src:
            count, descriptions = src.count, list(src.descriptions)
    except (OSError, rasterio.errors.RasterioError):
        return [], ""  # the raw gate names an unreadable file
    listed = side.get("bands")
    if count < 2 and not listed:
        return [], ""
    if isinstance(listed, list) and listed:
        names, origin = [canonical_band(sensor, str(b)) for b in listed], "the sidecar's bands list"
    elif all(descriptions):
        names, origin = [canonical_band(sensor, str(d)) for d in descriptions], "the file's band descriptions"
    elif count == len(spec.bands):
        return list(spec.band_names), ""
    else:
        return [], (
            f"{tif}: {count} bands without names, and sensor {sensor} has {len(spec.bands)} "
            f"({', '.join(spec.band_names)}); give them in the sidecar as bands: [...]"
        )
    unknown = [n for n in names if n not in spec.band_names]
    if len(names) != count or unknown or len(set(names)) != len(names):
        return [], (
            f"{tif}: {origin} {names} does not name its {count} bands once each as bands of {sensor} "
            f"({', '.join(spec.band_names)})"
        )
    return names, ""


def _raster_footprint(paths: list[Path]) -> tuple[list[float] | None, dict[str, Any] | None, str | None]:
    """(WGS84 bbox, WGS84 footprint polygon, CRS) of the first georeferenced file; Nones when there is none.

    The polygon is the raster's outline, edges densified, so a UTM raster's footprint stays the tilted
    quadrilateral it is in degrees (what overlap grouping compares), not its bbox.
    """
    import rasterio
    from rasterio.warp import transform, transform_bounds

    for path in paths:
        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    continue
                xs, ys = _outline(*src.bounds)
                lons, lats = transform(src.crs, "EPSG:4326", xs, ys)
                bbox = [float(v) for v in transform_bounds(src.crs, "EPSG:4326", *src.bounds)]
                ring = [[float(x), float(y)] for x, y in zip(lons, lats, strict=True)]
                return bbox, {"type": "Polygon", "coordinates": [ring]}, src.crs.to_string()
        except rasterio.errors.RasterioError:
            continue
    return None, None, None


def _outline(left: float, bottom: float, right: float, top: float, n: int = 21) -> tuple[list[float], list[float]]:
    """A closed counter-clockwise ring around the bounds, `n` points per edge."""
    steps = [k / (n - 1) for k in range(n - 1)]
    xs = [left + (right - left) * t for t in steps] + [right] * (n - 1)
    ys = [bottom] * (n - 1) + [bottom + (top - bottom) * t for t in steps]
    xs += [right - (right - left) * t for t in steps] + [left] * (n - 1)
    ys += [top] * (n - 1) + [top - (top - bottom) * t for t in steps]
    return xs + [left], ys + [bottom]
