"""One raster's outputs: its row of `rasters.parquet`, its tiled GeoTIFF and the JSON record beside it.

The record (`{name}.json` next to `{name}.tif`, written after it) holds the row and a key: a hash of
the params, the input files' sizes and mtimes and whatever else the raster depends on. A rerun with
the same key reuses the raster instead of warping it again, which makes the stage restartable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rasterio

from msgfm.coreg.warp import write_tiled_tiff
from msgfm.geo.grids import Grid
from msgfm.geo.io import aoi_problem, atomic_write_json, inside, sha256_file

if TYPE_CHECKING:
    from msgfm.config import CoregisterParams
    from msgfm.coreg.inputs import Item

RASTER_COLUMNS = [
    "id", "item_id", "aoi", "biome", "sensor", "kind", "datetime", "date", "path", "grid", "crs", "transform",
    "width", "height", "count", "band_names", "nodata", "reference_id", "shift_dx_px", "shift_dy_px",
    "shift_error", "shift_confidence", "shift_note", "truth_dx_px", "truth_dy_px", "valid_fraction", "status", "error",
]  # fmt: skip
"""Columns of data/coreg/rasters.parquet (see docs/data-layout.md)."""


def raster_name(item: Item) -> str:
    """File stem of an acquisition's raster: `{sensor}_{YYYYMMDD}_{8 hex of SHA-256(item id)}` (`landcover` per AOI).

    Readable (sensor and date) and stable, yet one per acquisition: two of the same day do not overwrite each other.
    """
    if item.sensor == "landcover":
        return "landcover"
    return f"{item.sensor}_{item.date}_{hashlib.sha256(item.id.encode()).hexdigest()[:8]}"


def params_key(cfg: CoregisterParams, *parts: Any) -> str:
    """Hash of the params and inputs a raster depends on, to reuse its output on a rerun."""
    blob = json.dumps([cfg.model_dump(mode="json"), *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_stamp(paths: Iterable[Path]) -> list:
    """(file name, SHA-256 of its bytes) of each input, (name, None) when missing: a changed input invalidates reuse.

    Contents, not paths or mtimes, so a fresh clone that downloads the same bytes writes the same records.
    """
    return [(p.name, sha256_file(p) if p.is_file() else None) for p in paths]


def empty_row(item: Item, raster_id: str, kind: str, grid: str) -> dict[str, Any]:
    """The row of a raster not written (yet): status failed, no file, no shift; callers fill in the rest."""
    return {
        "id": raster_id,
        "item_id": item.id,
        "aoi": item.aoi,
        "biome": item.biome,
        "sensor": item.sensor,
        "kind": kind,
        "datetime": item.datetime,
        "date": "" if pd.isna(item.datetime) else item.datetime.strftime("%Y-%m-%d"),
        "path": "",
        "grid": grid,
        "crs": "",
        "transform": [],
        "width": 0,
        "height": 0,
        "count": 0,
        "band_names": [],
        "nodata": float("nan"),
        "reference_id": "",
        "shift_dx_px": float("nan"),
        "shift_dy_px": float("nan"),
        "shift_error": float("nan"),
        "shift_confidence": float("nan"),
        "shift_note": "",
        "truth_dx_px": float("nan"),
        "truth_dy_px": float("nan"),
        "valid_fraction": 0.0,
        "status": "failed",
        "error": "",
    }


class RasterStore:
    """The stage's output folder: writes rasters with their records, reuses those of an earlier run."""

    def __init__(self, out_dir: Path, compress: str):
        self.out_dir = Path(out_dir)
        self.compress = compress
        self.pixels = 0
        """Pixels (bands x rows x cols) written by this run, for the report."""

    def aoi_problem(self, aoi: str) -> str:
        """Why `aoi` cannot be a folder of the store ('' when it can): not a safe name, or resolving outside it."""
        problem = aoi_problem(aoi)
        if not problem and not inside(self.out_dir / aoi, self.out_dir):
            problem = f"AOI folder {self.out_dir / aoi} resolves outside {self.out_dir}"
        return problem

    def path(self, rel: str) -> Path:
        """The absolute path of `rel` in the store; a ValueError when it would resolve outside the store."""
        path = self.out_dir / rel
        if not inside(path, self.out_dir):
            raise ValueError(f"{rel}: resolves outside {self.out_dir}; refused")
        return path

    def _record_path(self, rel: str) -> Path:
        return self.path(rel[: -len(".tif")] + ".json")

    def reuse(self, rel: str, key: str) -> dict[str, Any] | None:
        """The stored row of a raster written by an earlier run with the same key, if still valid."""
        record = self._record_path(rel)
        if not record.is_file() or not self.path(rel).is_file():
            return None
        try:
            stored = json.loads(record.read_text())
        except json.JSONDecodeError:
            return None
        if stored.get("key") != key:
            return None
        row = stored["row"]
        row["datetime"] = pd.Timestamp(row["datetime"])
        return row

    def read(self, rel: str) -> np.ndarray:
        """All bands (C, H, W) of a raster in the store, e.g. a reused one whose pixels are needed again."""
        with rasterio.open(self.path(rel)) as src:
            return src.read()

    def write(self, rel: str, key: str, array: np.ndarray, grid: Grid, row: dict, nodata: float | None) -> dict:
        """Write `array` on `grid` at `rel`, complete its row (file, grid, status ok) and record both under `key`."""
        write_tiled_tiff(
            self.path(rel), array, grid, nodata=nodata, band_names=row["band_names"], compress=self.compress
        )
        row.update(
            path=rel,
            crs=grid.crs,
            transform=list(grid.transform)[:6],
            width=grid.width,
            height=grid.height,
            count=int(array.shape[0]),
            nodata=float("nan") if nodata is None else float(nodata),
            status="ok",
        )
        self.pixels += int(array.size)
        atomic_write_json(self._record_path(rel), {"key": key, "row": row})
        return row
