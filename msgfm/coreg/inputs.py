"""What the stage reads: the download ledger's acquisitions the raw gate accepted, and the true shifts.

The ledger (`data/raw/acquisitions.parquet`) lists every downloaded acquisition with its asset paths;
only rows with status ok whose id the raw gate (`data/gates/raw.parquet`) accepted are co-registered.
The simulator's truth sidecars, when present, score the recovered shifts in the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from msgfm.decisions import accepted_ids


class CoregisterError(RuntimeError):
    """The stage cannot run at all (missing ledger or gate table); the message names the file."""


@dataclass
class Item:
    """One accepted acquisition from the ledger, with absolute asset paths."""

    id: str
    sensor: str
    aoi: str
    biome: str
    datetime: pd.Timestamp
    assets: dict[str, Path]

    @property
    def date(self) -> str:
        """YYYYMMDD ('' without a datetime: the stage refuses such an acquisition)."""
        return "" if pd.isna(self.datetime) else self.datetime.strftime("%Y%m%d")


def load_accepted_items(ledger_path: Path, gate_path: Path, raw_dir: Path) -> list[Item]:
    """Ledger rows with status ok that the raw gate accepted, with asset paths resolved under raw_dir."""
    if not ledger_path.is_file():
        raise CoregisterError(f"{ledger_path}: not found (run `msgfm download` and `msgfm validate_raw` first)")
    accepted = accepted_ids(gate_path, error=CoregisterError)
    ledger = pd.read_parquet(ledger_path)
    ledger = ledger[(ledger["status"] == "ok") & ledger["id"].astype(str).isin(accepted)]
    items = []
    for row in ledger.itertuples(index=False):
        assets = row.assets if isinstance(row.assets, dict) else json.loads(row.assets)
        items.append(
            Item(
                id=str(row.id),
                sensor=str(row.sensor),
                aoi=str(row.aoi),
                biome=str(getattr(row, "biome", "") or ""),
                datetime=_utc(row.datetime),
                assets={k: raw_dir / v for k, v in assets.items()},
            )
        )
    return sorted(items, key=lambda i: (i.aoi, i.sensor, pd.isna(i.datetime), i.datetime.value, i.id))


def _utc(value: object) -> pd.Timestamp:
    """A ledger datetime in UTC; NaT stays NaT (the stage refuses that acquisition with a reason)."""
    ts = pd.Timestamp(value)
    if pd.isna(ts):
        return pd.NaT
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def refusal(item: Item, max_source_px: int) -> str:
    """Why an acquisition must not be read ("" if it may): no datetime, or a header claiming too many pixels.

    Checked from the headers alone, before any full read, so one absurd item fails its row instead of the stage.
    """
    import rasterio
    import rasterio.errors

    if pd.isna(item.datetime):
        return "no valid acquisition datetime in the ledger"
    for key, path in sorted(item.assets.items()):
        try:
            with rasterio.open(path) as src:
                width, height = src.width, src.height
        except (OSError, rasterio.errors.RasterioError):
            continue  # unreadable: the strategy reports it with its own reason
        if width * height > max_source_px:
            return (
                f"{key} ({path.name}): header claims {width} x {height} px ({width * height:,} px), "
                f"above coregister.max_source_px {max_source_px:,}"
            )
    return ""


def load_truth(truth_dir: Path | None, aoi: str) -> dict[str, tuple[float, float]]:
    """True misregistration per item id from the simulator's sidecar, in the stage's convention ({} if none).

    The sidecar (docs/simulator.md) gives the shift to apply to the raster to align it, (dx_px, dy_px):
    the raster's pixel (r, c) shows the ground of reference pixel (r + dy_px, c + dx_px). So the content
    of reference pixel p appears at p - (dx_px, dy_px): our shift (msgfm.coreg.shifts) is its negation.
    """
    if truth_dir is None:
        return {}
    path = Path(truth_dir) / f"{aoi}.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    entries = doc.get("shifts", doc) if isinstance(doc, dict) else {}
    truth = {}
    for item_id, t in entries.items():
        if isinstance(t, dict) and "dx_px" in t and "dy_px" in t:
            truth[item_id] = (-float(t["dx_px"]), -float(t["dy_px"]))
    return truth
