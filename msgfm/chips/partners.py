"""Pairing in time: which acquisition, and so which chip, each chip is paired with.

Pairing is per acquisition: each S1 acquisition is paired with the S2 acquisition closest in time
within `pair.max_days`, each RGB with the closest DSM within `pair.fine_max_days`; a chip's partner
is the partner acquisition's chip at the same position. An S2 (or DSM) chip's partner is the
closest-in-time S1 (RGB) chip that chose it. Chips without a partner stay unpaired.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

_PAIR_OF = {"s1": "s2", "rgb": "dsm"}
"""The sensor whose acquisitions choose a partner -> the sensor they choose from."""


@dataclass
class Raster:
    """One accepted co-registered image raster and the chips kept from it, keyed by (row, col)."""

    row: dict[str, Any]
    """Its rasters.parquet row."""
    path: Path
    cloud_path: Path | None
    chips: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    """Per kept chip: nodata and cloud fractions, then `partner` (Raster, days) and `store_index`."""


def choose_partners(rasters: list[Raster], max_days: float, fine_max_days: float) -> None:
    """Set `partner` on the chips of one AOI's rasters (see the module docstring)."""
    by_sensor: dict[str, list[Raster]] = defaultdict(list)
    for r in rasters:
        by_sensor[r.row["sensor"]].append(r)
    for sensor, partner in _PAIR_OF.items():
        limit = max_days if sensor == "s1" else fine_max_days
        chosen_by: dict[int, list[tuple[float, Raster]]] = defaultdict(list)
        for r in by_sensor.get(sensor, []):
            best = _closest(r, by_sensor.get(partner, []), limit)
            if best is None:
                continue
            days, other = best
            chosen_by[id(other)].append((days, r))
            for p, chip in r.chips.items():
                if p in other.chips:
                    chip["partner"] = (other, days)
        for other in by_sensor.get(partner, []):
            for days, r in sorted(chosen_by.get(id(other), []), key=lambda t: (t[0], t[1].row["datetime"])):
                for p, chip in other.chips.items():
                    if "partner" not in chip and p in r.chips:
                        chip["partner"] = (r, days)


def _closest(raster: Raster, candidates: list[Raster], max_days: float) -> tuple[float, Raster] | None:
    """The candidate acquisition closest in time within `max_days` (earlier wins ties), with the gap in days."""
    best = None
    t = pd.Timestamp(raster.row["datetime"])
    for other in candidates:
        days = abs((pd.Timestamp(other.row["datetime"]) - t).total_seconds()) / 86400
        if days <= max_days and (best is None or (days, other.row["datetime"]) < (best[0], best[1].row["datetime"])):
            best = (days, other)
    return best
