"""The coreg gate (`msgfm validate_coreg`): is every co-registered raster on its AOI grid and aligned?

The table has one row per row of `data/coreg/rasters.parquet`, re-measured from the written files:
readable or why not; the file's CRS, transform and shape against the AOI's reference grid
(`data/coreg/{aoi}/grids.json`: S2 10 m grid or fine grid); the share of valid pixels; and, for the
shift-corrected sensors (S1, DSM), the residual misregistration re-measured on the corrected file
against the reference features rebuilt from the S2 and RGB outputs by a measure independent of the
correction's estimator (zero-normalised cross-correlation in the image, msgfm.coreg.residuals; not
measurable, `residual_note`, when its peak correlation is below `gates.min_residual_zncc`).
The GX suite decides per raster (see `coreg_checks`); the pair stage reads only accepted rasters.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio

from msgfm.config import CoregisterParams, GatesParams
from msgfm.coreg.aoi_grids import read_grids
from msgfm.coreg.residuals import measure_residuals
from msgfm.geo.grids import crs_string
from msgfm.validation.gates import Check, GateResult, run_gate, write_gate

log = logging.getLogger(__name__)


def _describe_file(path: Path, reference) -> dict[str, Any]:
    """Readability, grid agreement and valid fraction of one written raster."""
    out: dict[str, Any] = {"readable": False, "read_error": "", "grid_matches": None, "grid_problem": ""}
    try:
        with rasterio.open(path) as src:
            band = src.read(1)
            nodata = src.nodata
            crs = crs_string(src.crs) if src.crs else ""
            transform, width, height = src.transform, src.width, src.height
    except (rasterio.errors.RasterioError, OSError) as e:
        out["read_error"] = str(e).splitlines()[0][:200]
        return out
    out["readable"] = True
    valid = np.isfinite(band) if band.dtype.kind == "f" else np.ones(band.shape, bool)
    if nodata is not None and not math.isnan(nodata):
        valid &= band != nodata
    out["file_valid_fraction"] = float(valid.mean())
    if reference is None:
        out["grid_matches"] = False
        out["grid_problem"] = "the AOI has no reference grid (grids.json missing or without this grid)"
    else:
        out["grid_matches"] = bool(reference.matches(crs, transform, width, height))
        if not out["grid_matches"]:
            out["grid_problem"] = (
                f"file has {crs or 'no CRS'} {tuple(round(v, 4) for v in list(transform)[:6])} {width}x{height}, "
                f"grid is {reference.crs} {tuple(round(v, 4) for v in list(reference.transform)[:6])} "
                f"{reference.width}x{reference.height}"
            )
    return out


def build_coreg_table(coreg_dir: str | Path, coregister: CoregisterParams, gates: GatesParams) -> pd.DataFrame:
    """One row per co-registered raster with what the checks look at."""
    coreg_dir = Path(coreg_dir)
    path = coreg_dir / "rasters.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `msgfm coregister` first)")
    rasters = pd.read_parquet(path)
    grids = {aoi: read_grids(coreg_dir, aoi) for aoi in rasters["aoi"].unique()}
    rows = []
    for r in rasters.to_dict(orient="records"):
        row = {
            "id": r["id"],
            "aoi": r["aoi"],
            "sensor": r["sensor"],
            "grid": r["grid"],
            "path": r["path"],
            "status": r["status"],
            "error": r["error"] or "",
            "readable": None,
            "read_error": "",
            "grid_matches": None,
            "grid_problem": "",
            "valid_fraction": None,
            "residual_px": None,
        }
        if r["status"] == "ok":
            described = _describe_file(coreg_dir / r["path"], grids[r["aoi"]].get(r["grid"]))
            row.update({k: v for k, v in described.items() if k != "file_valid_fraction"})
            row["valid_fraction"] = described.get("file_valid_fraction")
        rows.append(row)
    table = pd.DataFrame(rows)
    readable_ok = rasters[rasters["id"].isin(table.loc[table["readable"] == True, "id"])]  # noqa: E712
    try:
        residuals = measure_residuals(readable_ok, coreg_dir, coregister, gates.min_residual_zncc)
    except (rasterio.errors.RasterioError, OSError, ValueError) as e:
        log.warning("residual measurement failed: %s", e)
        residuals = {}
    table["residual_px"] = [_residual_px(residuals.get(i)) for i in table["id"]]
    table["residual_note"] = [_residual_note(residuals.get(i), gates.min_residual_zncc) for i in table["id"]]
    for col in ("readable", "grid_matches"):
        table[col] = table[col].astype(object)
    for col in ("valid_fraction", "residual_px"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    return table


def coreg_checks(gates: GatesParams) -> list[Check]:
    """The coreg suite: produced, readable, on the AOI grid, aligned, overlapping enough; unique ids."""
    import great_expectations as gx

    ex = gx.expectations
    return [
        Check("produced", ex.ExpectColumnValuesToBeInSet(column="status", value_set=["ok"]), "coregister: {error}"),
        Check(
            "readable", ex.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]), "unreadable: {read_error}"
        ),
        Check(
            "on_reference_grid",
            ex.ExpectColumnValuesToBeInSet(column="grid_matches", value_set=[True]),
            "not on the AOI's {grid} grid: {grid_problem}",
        ),
        Check(
            "residual_small",
            ex.ExpectColumnValuesToBeBetween(column="residual_px", min_value=0, max_value=gates.max_residual_px),
            "residual misregistration {residual_px:.2f} px after correction > " + f"{gates.max_residual_px} px",
        ),
        Check(
            "valid_overlap",
            ex.ExpectColumnValuesToBeBetween(column="valid_fraction", min_value=gates.min_valid_fraction, max_value=1),
            "valid overlap {valid_fraction:.3f} of the AOI grid < " + f"{gates.min_valid_fraction}",
        ),
        Check("unique_ids", ex.ExpectColumnValuesToBeUnique(column="id"), "duplicate raster id {id}", "dataset"),
    ]


def validate_coreg(
    coreg_dir: str | Path,
    coregister: CoregisterParams,
    gates: GatesParams,
    *,
    gates_dir: str | Path,
    reports_dir: str | Path,
) -> GateResult:
    """Build the coreg table, run the suite, write {gates_dir}/coreg.parquet and the report."""
    table = build_coreg_table(coreg_dir, coregister, gates)
    result = run_gate(
        "coreg", table, coreg_checks(gates), min_pass_rate=gates.min_pass_rate, keep=("residual_px", "residual_note")
    )
    measured = table["residual_px"].dropna()
    result.report["residual_px"] = {
        "n": int(len(measured)),
        "median": round(float(measured.median()), 4) if len(measured) else None,
        "max": round(float(measured.max()), 4) if len(measured) else None,
        "not_measurable": int((table["residual_note"] != "").sum()),
        "notes": {str(i): n for i, n in zip(table["id"], table["residual_note"], strict=True) if n},
    }
    write_gate(result, gates_dir=gates_dir, reports_dir=reports_dir)
    return result


def _residual_px(measured: tuple[float, float, float, int, int] | None) -> float | None:
    """The residual's length in px; None when it was not measured or not measurable."""
    if measured is None or not math.isfinite(measured[0]):
        return None
    return round(math.hypot(measured[0], measured[1]), 4)


def _residual_note(measured: tuple[float, float, float, int, int] | None, min_zncc: float) -> str:
    """Why a residual is not measurable, with its numbers (peak, window px); '' when measured or not asked."""
    if measured is None or math.isfinite(measured[0]):
        return ""
    _, _, peak, width, height = measured
    if not math.isfinite(peak):
        return f"residual not measurable: the {width}x{height} px match window is too small for the shift search"
    return (
        f"residual not measurable: peak ZNCC {peak:.2f} < gates.min_residual_zncc {min_zncc} over a "
        f"{width}x{height} px window: the S1/DSM gradients do not match the reference's texture there "
        "(real co-located S1/S2 patches of 120-256 px peak at 0.15-0.3: docs/real-data.md)"
    )
