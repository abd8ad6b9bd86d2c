"""The raw gate (`msgfm validate_raw`): is every downloaded acquisition usable by co-registration?

The table has one row per ledger item (data/raw/acquisitions.parquet), built by opening every
asset with rasterio: readable or why not, CRS (and whether it is the one the item declares in
`proj:code`, `proj:epsg` or `proj:wkt2`, an asset's own field before the item's), band count and
dtype, nodata fraction, NaN/inf pixels, pixels outside the sensor's physical range. A reason about
an asset names it. What each asset should hold, and how a file is read, is in
`msgfm.validation.assets`. The GX suite then decides per item; see `raw_checks`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from msgfm.config import GatesParams, SourceParams
from msgfm.ingest.download import read_ledger
from msgfm.sensors import SENSORS, level_keys
from msgfm.validation.assets import AssetLayout, asset_layout, crs_mismatch, open_asset
from msgfm.validation.gates import Check, GateResult, run_gate, write_gate
from msgfm.validation.plausibility import implausible_date, implausible_values


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
    """The raw-table row of one ledger item: its download outcome, then what its asset files hold."""
    sensor = rec.get("sensor") or ""
    keys = level_keys(sensor, rec.get("level"), list(source.assets.get(sensor, [])))
    assets = json.loads(rec.get("assets") or "{}")
    item = _item_json(rec, raw_dir)
    row = _empty_row(rec, item, keys, assets)
    if rec.get("status") != "ok":
        return row
    tally = _AssetTally()
    for key, rel in assets.items():
        layout = asset_layout(sensor, key, keys or list(assets))
        info = open_asset(raw_dir / rel, layout, gates.max_read_px, gates.max_pixels)
        if "error" in info:
            tally.unreadable.append(f"{key}: {info['error']}")
            continue
        if not info["crs"]:
            tally.no_crs.append(key)
        else:
            mismatch = crs_mismatch(info["crs"], item, key)
            if mismatch:
                tally.crs_mismatch.append(f"{key} ({rel}) {mismatch}")
        if layout is not None:
            tally.add(key, info, layout)
    row.update(tally.columns())
    row["implausible"] = implausible_values(sensor, row["value_min"], row["value_max"], row["foreign_codes"])
    return row


def _empty_row(rec: dict[str, Any], item: dict[str, Any], keys: list[str], assets: dict[str, str]) -> dict[str, Any]:
    """An item's row before its files are opened: identity, download outcome, missing assets, no statistics."""
    ok = rec.get("status") == "ok"
    when = _item_datetime(rec, item)
    return {
        "id": rec["id"],
        "sensor": rec.get("sensor") or "",
        "aoi": rec.get("aoi") or "",
        "datetime": when,
        "datetime_error": _datetime_problem(when, rec.get("sensor") or ""),
        "download_error": "" if ok else (rec.get("error") or "download failed"),
        "missing_assets": ", ".join(k for k in keys if k not in assets) if ok else "",
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
        "foreign_codes": "",
        "implausible": "",
        "duplicate_of": "",
    }


def lossless(info: dict[str, Any], expected: str) -> bool:
    """True when an integer asset of another integer type holds only values the expected type can hold.

    int16 Sentinel-2 (Google Earth Engine exports) with no negative value is reflectance x 10000 like uint16;
    judged on the gate's (possibly decimated) read, and coregister writes the registry's dtype.
    """
    import numpy as np

    try:
        got, want = np.dtype(info["dtype"]), np.dtype(expected)
    except TypeError:
        return False  # several dtypes in one file, or none numpy knows
    if got.kind not in "iu" or want.kind not in "iu":
        return False
    if info.get("value_min") is None:
        return True  # no valid pixel: the nodata check speaks
    limits = np.iinfo(want)
    return limits.min <= info["value_min"] and info["value_max"] <= limits.max


@dataclass
class _AssetTally:
    """What an item's assets hold, summed over them: the problems by asset and the band-asset statistics."""

    unreadable: list[str] = field(default_factory=list)
    no_crs: list[str] = field(default_factory=list)
    crs_mismatch: list[str] = field(default_factory=list)
    dtype_detail: list[str] = field(default_factory=list)
    band_detail: list[str] = field(default_factory=list)
    nonfinite_assets: list[str] = field(default_factory=list)
    out_of_range_assets: list[str] = field(default_factory=list)
    foreign_codes: set[int] = field(default_factory=set)
    count: int = 0
    expected: int = 0
    nonfinite: int = 0
    valid: int = 0
    out_of_range: float = 0.0
    dtypes: set[str] = field(default_factory=set)
    expected_dtypes: set[str] = field(default_factory=set)
    worst: tuple[float, str] = (-1.0, "")
    vmin: float = math.inf
    vmax: float = -math.inf
    valid_range: tuple[float, float] | None = None

    def add(self, key: str, info: dict[str, Any], layout: AssetLayout) -> None:
        """Count one readable band-bearing asset, described by `open_asset`, against its expected layout."""
        self.count += info["count"]
        self.expected += layout.bands
        if info["count"] < layout.bands:
            self.band_detail.append(f"{key} has {info['count']} of {layout.bands}")
        if info["nonfinite"]:
            self.nonfinite_assets.append(key)
        if info["out_of_range"]:
            self.out_of_range_assets.append(key)
        same = info["dtype"] == layout.dtype or lossless(info, layout.dtype)
        self.dtypes.add(layout.dtype if same else info["dtype"])  # int16 holding uint16 values counts as uint16
        self.foreign_codes.update(info.get("foreign_codes", []))
        self.expected_dtypes.add(layout.dtype)
        if not same:
            self.dtype_detail.append(f"{key} is {info['dtype']}")
        if info["nodata_fraction"] > self.worst[0]:
            self.worst = (info["nodata_fraction"], key)
        self.nonfinite += info["nonfinite"]
        self.out_of_range += info["out_of_range"]
        self.valid += info["valid_pixels"]
        if info["value_min"] is not None:
            self.vmin, self.vmax = min(self.vmin, info["value_min"]), max(self.vmax, info["value_max"])
        self.valid_range = layout.valid_range

    def columns(self) -> dict[str, Any]:
        """The row's asset columns; the statistics only when some asset bears bands."""
        out: dict[str, Any] = {
            "unreadable": "; ".join(self.unreadable),
            "no_crs": ", ".join(self.no_crs),
            "crs_mismatch": "; ".join(self.crs_mismatch),
            "dtype_detail": ", ".join(self.dtype_detail),
            "band_detail": ", ".join(self.band_detail),
            "nonfinite_assets": ", ".join(self.nonfinite_assets),
            "out_of_range_assets": ", ".join(self.out_of_range_assets),
            "foreign_codes": _listed(sorted(self.foreign_codes)),
        }
        if self.valid_range is not None:  # some asset bears bands
            out.update(
                band_count=self.count,
                expected_band_count=self.expected,
                dtypes=",".join(sorted(self.dtypes)),
                expected_dtypes=",".join(sorted(self.expected_dtypes)),
                nodata_fraction=self.worst[0],
                nodata_asset=self.worst[1],
                nonfinite_pixels=self.nonfinite,
                out_of_range_fraction=self.out_of_range / self.valid if self.valid else 0.0,
                value_min=self.vmin if math.isfinite(self.vmin) else None,
                value_max=self.vmax if math.isfinite(self.vmax) else None,
                valid_min=self.valid_range[0],
                valid_max=self.valid_range[1],
            )
        return out


def _listed(values: list[int], most: int = 8) -> str:
    """Up to `most` values, comma-separated, then how many more."""
    text = ", ".join(str(v) for v in values[:most])
    return text + (f" and {len(values) - most} more" if len(values) > most else "")


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


def _item_datetime(rec: dict[str, Any], item: dict[str, Any]) -> str | None:
    """The datetime as published (from item.json), so unparseable text reaches the gate as it was."""
    if item:
        props = item.get("properties") or {}
        value = props.get("datetime") or props.get("start_datetime")
        return str(value) if value else None
    ts = rec.get("datetime")
    return None if ts is None or pd.isna(ts) else pd.Timestamp(ts).isoformat()


def _datetime_problem(when: str | None, sensor: str) -> str:
    """Why a published datetime is no ISO 8601 date-time the sensor could have taken ("" when it is).

    dateutil reads `10` as the 10th of this month; later stages need the instant the item was acquired,
    inside its mission (absent or unparseable datetimes have their own checks).
    """
    import dateutil.parser

    if when is None:
        return ""
    try:
        dateutil.parser.parse(when)
    except (ValueError, OverflowError):
        return ""  # `datetime_parseable` says so
    try:
        parsed = dt.datetime.fromisoformat(when) if re.match(r"\d{4}-\d{2}-\d{2}", when) else None
    except ValueError:
        parsed = None
    if parsed is None:
        return f"datetime {when!r} is not an ISO 8601 date-time (YYYY-MM-DDThh:mm:ssZ)"
    return implausible_date(sensor, parsed)


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
    return [*_file_checks(e), *_pixel_checks(e, gates), *_time_and_identity_checks(e)]


def _file_checks(e: ModuleType) -> list[Check]:
    """Downloaded, of a known sensor, every asset present, readable and in the CRS its item declares."""
    known = sorted({*SENSORS, "landcover"})
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
    ]


def _pixel_checks(e: ModuleType, gates: GatesParams) -> list[Check]:
    """The sensor's bands and dtype, little nodata, finite values inside the sensor's physical range."""
    pair = {"ignore_row_if": "either_value_is_missing"}
    return [
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
        Check("plausible", e.ExpectColumnValuesToBeInSet(column="implausible", value_set=[""]), "{implausible}"),
    ]


def _time_and_identity_checks(e: ModuleType) -> list[Check]:
    """A parseable datetime, no second copy of an acquisition, and (for the whole gate) unique ids."""
    return [
        Check("datetime_present", e.ExpectColumnValuesToNotBeNull(column="datetime"), "no datetime"),
        Check(
            "datetime_parseable",
            e.ExpectColumnValuesToBeDateutilParseable(column="datetime"),
            "datetime {datetime!r} is not parseable",
        ),
        Check(
            "datetime_iso", e.ExpectColumnValuesToBeInSet(column="datetime_error", value_set=[""]), "{datetime_error}"
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
