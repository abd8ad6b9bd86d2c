"""The raw gate (`msgfm validate_raw`): is every downloaded acquisition usable by co-registration?

The table has one row per ledger item (data/raw/acquisitions.parquet), built by opening every
asset with rasterio: readable or why not, CRS (and whether it is the one the item declares in
`proj:code`, `proj:epsg` or `proj:wkt2`, an asset's own field before the item's), band count and
dtype, nodata fraction, NaN/inf pixels, pixels outside the sensor's physical range. A reason about
an asset names it. Expected layouts come from msgfm.sensors:
an asset named after one of the sensor's bands holds that band (S2 `B04`, S1 `VV`); a sensor whose
bands are not split into assets holds all of them in each data asset (RGB `image`, DSM `dsm`);
other assets of a band-split sensor are auxiliary (S2 `cloud_mask`) and are only checked for being
readable and georeferenced. The GX suite then decides per item; see `raw_checks`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msgfm.config import GatesParams, SourceParams
from msgfm.ingest.download import read_ledger
from msgfm.landcover import LEGEND, NODATA
from msgfm.sensors import SENSORS
from msgfm.validation.gates import Check, GateResult, run_gate, write_gate

log = logging.getLogger(__name__)

CRS_FIELDS = ("proj:code", "proj:epsg", "proj:wkt2")
"""STAC projection fields declaring a CRS, in the order they are read."""


@dataclass(frozen=True)
class AssetLayout:
    """What a band-bearing asset must look like; None fields are not checked."""

    bands: int
    dtype: str
    nodata: float | None
    valid_range: tuple[float, float]


def asset_layout(sensor: str, key: str, keys: list[str]) -> AssetLayout | None:
    """Expected layout of asset `key` of a `sensor` item whose required assets are `keys`; None if auxiliary."""
    if sensor == "landcover":
        return AssetLayout(1, "uint8", NODATA, (NODATA, max(c.code for c in LEGEND)))
    spec = SENSORS.get(sensor)
    if spec is None:
        return None
    by_name = {b.name.lower(): b for b in spec.bands}
    band = by_name.get(key.lower())
    if band is not None:
        return AssetLayout(1, band.dtype, band.nodata, spec.valid_range)
    if any(k.lower() in by_name for k in keys):
        return None  # an auxiliary asset (mask, scene classification) of a band-split sensor
    first = spec.bands[0]
    return AssetLayout(len(spec.bands), first.dtype, first.nodata, spec.valid_range)


def _open_asset(path: Path, layout: AssetLayout | None, max_read_px: int) -> dict[str, Any]:
    """Describe one asset file; problems become a short `error` text, never an exception."""
    import rasterio
    from rasterio.errors import RasterioError

    if not path.is_file():
        return {"error": "file missing from data/raw"}
    if path.stat().st_size == 0:
        return {"error": "zero-byte file"}
    try:
        src = rasterio.open(path)
    except RasterioError as e:
        return {"error": f"not a readable GeoTIFF ({_short(e)})"}
    with src:
        out: dict[str, Any] = {"crs": src.crs.to_string() if src.crs else None, "count": src.count}
        out["dtype"] = ",".join(sorted(set(src.dtypes)))
        scale = max(1, math.ceil(max(src.height, src.width) / max_read_px))
        shape = (src.count, max(1, src.height // scale), max(1, src.width // scale))
        try:
            data = src.read(out_shape=shape)
        except RasterioError as e:
            return {**out, "error": f"pixel data unreadable, file truncated or corrupt ({_short(e)})"}
        nodata = src.nodata if src.nodata is not None else (layout.nodata if layout else None)
    if layout is None:
        return out
    finite = np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, bool)
    if nodata is None:
        is_nodata = np.zeros(data.shape, bool)
    elif isinstance(nodata, float) and math.isnan(nodata):
        is_nodata = np.isnan(data)
        finite |= is_nodata
    else:
        is_nodata = data == nodata
    valid = finite & ~is_nodata
    values = data[valid]
    lo, hi = layout.valid_range
    out.update(
        nodata_fraction=float(is_nodata.mean()),
        nonfinite=int((~finite).sum()),
        out_of_range=float(((values < lo) | (values > hi)).sum()),
        valid_pixels=int(values.size),
        value_min=float(values.min()) if values.size else None,
        value_max=float(values.max()) if values.size else None,
    )
    return out


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]


def build_raw_table(raw_dir: str | Path, source: SourceParams, gates: GatesParams) -> pd.DataFrame:
    """One row per ledger item describing its downloaded assets (see module docstring)."""
    raw_dir = Path(raw_dir)
    if not (raw_dir / "acquisitions.parquet").is_file():
        raise FileNotFoundError(f"{raw_dir / 'acquisitions.parquet'}: no acquisitions ledger (run `msgfm download`)")
    ledger = read_ledger(raw_dir)
    rows = [_describe_item(rec, raw_dir, source, gates) for rec in ledger.to_dict(orient="records")]
    table = pd.DataFrame(rows)
    _mark_duplicates(table)
    for col in ("band_count", "expected_band_count", "nonfinite_pixels"):
        table[col] = pd.array(table[col], dtype="Int64")
    return table


def _describe_item(rec: dict[str, Any], raw_dir: Path, source: SourceParams, gates: GatesParams) -> dict[str, Any]:
    sensor = rec.get("sensor") or ""
    keys = list(source.assets.get(sensor, []))
    assets = json.loads(rec.get("assets") or "{}")
    item = _item_json(rec, raw_dir)
    row: dict[str, Any] = {
        "id": rec["id"],
        "sensor": sensor,
        "aoi": rec.get("aoi") or "",
        "datetime": _item_datetime(rec, item),
        "download_error": "" if rec.get("status") == "ok" else (rec.get("error") or "download failed"),
        "missing_assets": ", ".join(k for k in keys if k not in assets) if rec.get("status") == "ok" else "",
        "unreadable": "",
        "no_crs": "",
        "crs_mismatch": "",
        "band_count": None,
        "band_detail": "",
        "expected_band_count": None,
        "dtypes": None,
        "expected_dtypes": None,
        "dtype_detail": "",
        "nodata_fraction": None,
        "nodata_asset": "",
        "nonfinite_pixels": None,
        "nonfinite_assets": "",
        "out_of_range_fraction": None,
        "out_of_range_assets": "",
        "value_min": None,
        "value_max": None,
        "valid_min": None,
        "valid_max": None,
        "duplicate_of": "",
    }
    if rec.get("status") != "ok":
        return row
    unreadable, no_crs, crs_mismatch, dtype_detail = [], [], [], []
    band_detail, nonfinite_assets, out_of_range_assets = [], [], []
    count = expected = nonfinite = valid = 0
    out_of_range = 0.0
    dtypes, expected_dtypes = set(), set()
    worst = (-1.0, "")
    vmin, vmax = math.inf, -math.inf
    band_assets = 0
    for key, rel in assets.items():
        layout = asset_layout(sensor, key, keys or list(assets))
        info = _open_asset(raw_dir / rel, layout, gates.max_read_px)
        if "error" in info:
            unreadable.append(f"{key}: {info['error']}")
            continue
        if not info["crs"]:
            no_crs.append(key)
        else:
            mismatch = _crs_mismatch(info["crs"], item, key)
            if mismatch:
                crs_mismatch.append(f"{key} ({rel}) {mismatch}")
        if layout is None:
            continue
        band_assets += 1
        count += info["count"]
        expected += layout.bands
        if info["count"] < layout.bands:
            band_detail.append(f"{key} has {info['count']} of {layout.bands}")
        if info["nonfinite"]:
            nonfinite_assets.append(key)
        if info["out_of_range"]:
            out_of_range_assets.append(key)
        dtypes.add(info["dtype"])
        expected_dtypes.add(layout.dtype)
        if info["dtype"] != layout.dtype:
            dtype_detail.append(f"{key} is {info['dtype']}")
        if info["nodata_fraction"] > worst[0]:
            worst = (info["nodata_fraction"], key)
        nonfinite += info["nonfinite"]
        out_of_range += info["out_of_range"]
        valid += info["valid_pixels"]
        if info["value_min"] is not None:
            vmin, vmax = min(vmin, info["value_min"]), max(vmax, info["value_max"])
        row["valid_min"], row["valid_max"] = layout.valid_range
    row["unreadable"] = "; ".join(unreadable)
    row["no_crs"] = ", ".join(no_crs)
    row["crs_mismatch"] = "; ".join(crs_mismatch)
    row["dtype_detail"] = ", ".join(dtype_detail)
    row["band_detail"] = ", ".join(band_detail)
    row["nonfinite_assets"] = ", ".join(nonfinite_assets)
    row["out_of_range_assets"] = ", ".join(out_of_range_assets)
    if band_assets:
        row.update(
            band_count=count,
            expected_band_count=expected,
            dtypes=",".join(sorted(dtypes)),
            expected_dtypes=",".join(sorted(expected_dtypes)),
            nodata_fraction=worst[0],
            nodata_asset=worst[1],
            nonfinite_pixels=nonfinite,
            out_of_range_fraction=out_of_range / valid if valid else 0.0,
            value_min=vmin if math.isfinite(vmin) else None,
            value_max=vmax if math.isfinite(vmax) else None,
        )
    return row


def _item_json(rec: dict[str, Any], raw_dir: Path) -> dict[str, Any]:
    """The stored STAC item of a ledger row ({} when it is absent or unreadable)."""
    item_path = rec.get("item_path")
    if item_path and (raw_dir / item_path).is_file():
        try:
            item = json.loads((raw_dir / item_path).read_text())
            return item if isinstance(item, dict) else {}
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            pass
    return {}


def _crs_mismatch(file_crs: str, item: dict[str, Any], key: str) -> str:
    """How the file's CRS differs from the one the item declares for asset `key` ("" if it does not or none is)."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    asset = (item.get("assets") or {}).get(key) or {}
    props = item.get("properties") or {}
    for where, fields in (("asset", asset), ("item", props)):
        field = next((f for f in CRS_FIELDS if fields.get(f) not in (None, "")), None)
        if field is None:
            continue
        value = fields[field]
        declared = f"EPSG:{value}" if field == "proj:epsg" else str(value)
        try:
            if CRS.from_user_input(declared) == CRS.from_user_input(file_crs):
                return ""
        except CRSError:
            return f"is in {file_crs}, but the {where}'s {field} {value!r} is not a CRS"
        return f"is in {file_crs}, but the {where}'s {field} says {declared}"
    return ""


def _item_datetime(rec: dict[str, Any], item: dict[str, Any]) -> str | None:
    """The datetime as published (from item.json), so unparseable text reaches the gate as it was."""
    if item:
        props = item.get("properties") or {}
        value = props.get("datetime") or props.get("start_datetime")
        return str(value) if value else None
    ts = rec.get("datetime")
    return None if ts is None or pd.isna(ts) else pd.Timestamp(ts).isoformat()


def _mark_duplicates(table: pd.DataFrame) -> None:
    """Same sensor, AOI and acquisition time as an earlier (by id) downloaded item: `duplicate_of` names it."""
    if table.empty:
        table["duplicate_of"] = pd.Series(dtype=str)
        return
    when = pd.to_datetime(table["datetime"], utc=True, errors="coerce", format="ISO8601")
    ok = (table["download_error"] == "") & when.notna()
    first: dict[tuple, str] = {}
    for idx in table[ok].sort_values("id", kind="stable").index:
        key = (table.at[idx, "sensor"], table.at[idx, "aoi"], when[idx])
        if key in first:
            table.at[idx, "duplicate_of"] = first[key]
        else:
            first[key] = table.at[idx, "id"]


def raw_checks(gates: GatesParams) -> list[Check]:
    """The raw suite: one GX expectation per property an acquisition must have."""
    import great_expectations as gx

    e = gx.expectations
    known = sorted({*SENSORS, "landcover"})
    pair = {"ignore_row_if": "either_value_is_missing"}
    return [
        Check("downloaded", e.ExpectColumnValuesToBeInSet(column="download_error", value_set=[""]), "{download_error}"),
        Check("known_sensor", e.ExpectColumnValuesToBeInSet(column="sensor", value_set=known), "unknown sensor"),
        Check(
            "assets_present",
            e.ExpectColumnValuesToBeInSet(column="missing_assets", value_set=[""]),
            "missing assets: {missing_assets}",
        ),
        Check("readable", e.ExpectColumnValuesToBeInSet(column="unreadable", value_set=[""]), "{unreadable}"),
        Check("crs_present", e.ExpectColumnValuesToBeInSet(column="no_crs", value_set=[""]), "no CRS: {no_crs}"),
        Check(
            "crs_matches_item",
            e.ExpectColumnValuesToBeInSet(column="crs_mismatch", value_set=[""]),
            "{crs_mismatch}",
        ),
        Check(
            "band_count",
            e.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="band_count", column_B="expected_band_count", or_equal=True, **pair
            ),
            "{band_count} bands, the sensor needs {expected_band_count}: {band_detail}",
        ),
        Check(
            "dtype",
            e.ExpectColumnPairValuesToBeEqual(column_A="dtypes", column_B="expected_dtypes", **pair),
            "wrong dtype: {dtype_detail} (expected {expected_dtypes})",
        ),
        Check(
            "nodata_fraction",
            e.ExpectColumnValuesToBeBetween(column="nodata_fraction", min_value=0, max_value=gates.max_nodata_fraction),
            "nodata fraction {nodata_fraction:.3f} in {nodata_asset} above gates.max_nodata_fraction "
            + f"{gates.max_nodata_fraction}",
        ),
        Check(
            "finite",
            e.ExpectColumnValuesToBeBetween(column="nonfinite_pixels", min_value=0, max_value=0),
            "{nonfinite_pixels} NaN/inf pixels in {nonfinite_assets}",
        ),
        Check(
            "value_range",
            e.ExpectColumnValuesToBeBetween(
                column="out_of_range_fraction", min_value=0, max_value=gates.max_out_of_range_fraction
            ),
            "{out_of_range_fraction:.2%} of pixels in {out_of_range_assets} outside the sensor range "
            "[{valid_min:g}, {valid_max:g}] (min {value_min:g}, max {value_max:g})",
        ),
        Check("datetime_present", e.ExpectColumnValuesToNotBeNull(column="datetime"), "no datetime"),
        Check(
            "datetime_parseable",
            e.ExpectColumnValuesToBeDateutilParseable(column="datetime"),
            "datetime {datetime!r} is not parseable",
        ),
        Check(
            "not_duplicate",
            e.ExpectColumnValuesToBeInSet(column="duplicate_of", value_set=[""]),
            "duplicate acquisition of {duplicate_of} (same sensor, AOI and datetime)",
        ),
        Check(
            "unique_ids",
            e.ExpectColumnValuesToBeUnique(column="id"),
            "id {id} appears twice in the ledger",
            scope="dataset",
        ),
    ]


def validate_raw(
    raw_dir: str | Path,
    source: SourceParams,
    gates: GatesParams,
    *,
    gates_dir: str | Path,
    reports_dir: str | Path,
) -> GateResult:
    """Build the raw table, run the suite, write {gates_dir}/raw.parquet and the report; return the result."""
    table = build_raw_table(raw_dir, source, gates)
    result = run_gate("raw", table, raw_checks(gates), min_pass_rate=gates.min_pass_rate)
    write_gate(result, gates_dir=gates_dir, reports_dir=reports_dir)
    return result
