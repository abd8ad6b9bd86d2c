"""The pairs gate (`msgfm validate_pairs`): is the manifest a sound training set?

One row per chip of `data/manifest.parquet`, with what the checks need computed beside it: does
the chip's footprint intersect a chip of another split (same CRS); are its store index and its
partner valid; are its statistics finite; which of its classes never occur in train. Dataset-level
checks fail the whole gate: the manifest schema, unique ids, chips of every split for every sensor
(`splits_complete`), spatially disjoint splits, train chips with land-cover classes (when any chip has some),
and the share of S1 and RGB chips with a partner at least `gates.min_paired_fraction`. A class that occurs in
val/test chips but in no train chip neither fails the gate nor rejects its chips (the split rule never empties
val or test to cover it): the report lists it under `classes_absent_from_train`, and evaluation reports it.

`splits_complete` is per split x sensor: pretraining trains on train and scores on val, fine-tuning tunes on
val and evaluation scores on test, and the four fine-tuning tasks together read every sensor (s1 and s2 for
classification and cloud removal, s2 for pan-sharpening, rgb and dsm for segmentation), so each sensor the
manifest holds needs chips in train, val and test. A sensor the manifest lacks altogether is not required
(pretraining leaves out sensors the store lacks; the task needing it says so).

Pretraining and fine-tuning read only the accepted chips. A manifest that is not the one written with the
chip store (`msgfm.chips.store.check_manifest`) is an error, not a verdict.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from msgfm.chips.cutting import MANIFEST_COLUMNS
from msgfm.chips.splits import SPLITS
from msgfm.chips.store import ChipStore, ChipStoreError, check_manifest
from msgfm.config import GatesParams, PairParams
from msgfm.validation.gates import Check, GateResult, run_gate, write_gate


def split_clashes(manifest: pd.DataFrame, chunk: int = 2048) -> np.ndarray:
    """Per chip, the splits (comma-joined, '' if none) of other-split chips whose footprints overlap it."""
    clashes = [set() for _ in range(len(manifest))]
    m = manifest.reset_index(drop=True)
    for _, group in m.groupby("crs"):
        idx = group.index.to_numpy()
        box = group[["minx", "miny", "maxx", "maxy"]].to_numpy(dtype=np.float64)
        split = group["split"].to_numpy()
        for start in range(0, len(idx), chunk):
            a = box[start : start + chunk]
            # footprints that share area clash; footprints that only touch along an edge (pair.buffer_m 0) do not
            eps = 1e-6 * (a[:, None, 2] - a[:, None, 0])
            hit = (
                (a[:, None, 0] < box[None, :, 2] - eps)
                & (box[None, :, 0] < a[:, None, 2] - eps)
                & (a[:, None, 1] < box[None, :, 3] - eps)
                & (box[None, :, 1] < a[:, None, 3] - eps)
                & (split[start : start + chunk, None] != split[None, :])
            )
            for i, j in zip(*np.nonzero(hit), strict=True):
                clashes[idx[start + i]].add(str(split[j]))
    return np.array([",".join(sorted(c)) for c in clashes], dtype=object)


def build_pairs_table(manifest_path: str | Path, chips_dir: str | Path) -> pd.DataFrame:
    """The manifest with the per-chip columns the pairs suite checks."""
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: not found (run `msgfm pair` first)")
    table = pd.read_parquet(manifest_path).reset_index(drop=True)
    missing = [c for c in ("id", "sensor", "split", "minx", "miny", "maxx", "maxy", "crs") if c not in table.columns]
    if missing:
        return table  # the schema check reports it
    counts: dict[str, int] = {}
    try:
        store = ChipStore(chips_dir)
    except ChipStoreError:
        pass  # no store: every chip fails in_store
    else:
        check_manifest(store, manifest_path)  # a store from another pair run: a clear error, not a gate verdict
        counts = {s: store.count(s) for s in store.sensors}
    table["split_sensor"] = table["split"].astype(str) + "/" + table["sensor"].astype(str)
    table["clash_splits"] = split_clashes(table)
    table["split_disjoint"] = table["clash_splits"] == ""
    table["in_store"] = [
        0 <= int(i) < counts.get(s, 0) for s, i in zip(table["sensor"], table["store_index"], strict=True)
    ]
    ids = set(table["id"])
    table["partner_ok"] = [
        (p is None or (isinstance(p, float) and math.isnan(p))) or (p in ids and int(pi) >= 0)
        for p, pi in zip(table["partner_id"], table["partner_index"], strict=True)
    ]
    stats = table[["mean", "std", "cloud_fraction", "nodata_fraction"]].to_numpy(dtype=np.float64)
    table["stats_finite"] = np.isfinite(stats).all(axis=1)
    train_classes = set().union(*[set(x) for x in table.loc[table["split"] == "train", "labels"]] or [set()])
    table["missing_in_train"] = [",".join(str(c) for c in sorted(set(x) - train_classes)) for x in table["labels"]]
    labelled = any(len(x) for x in table["labels"])
    table["train_has_classes"] = bool(train_classes) or not labelled
    pairable = table["sensor"].isin(["s1", "rgb"])
    table["paired_pairable"] = np.where(pairable, table["paired"].astype(float), np.nan)
    return table


def absent_classes(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per class code absent from train, its chips per split: what the gate reports instead of failing."""
    out: dict[str, dict[str, int]] = {}
    for codes, split in zip(table["missing_in_train"], table["split"], strict=True):
        for code in filter(None, codes.split(",")):
            out.setdefault(code, {}).setdefault(str(split), 0)
            out[code][str(split)] += 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def missing_split_sensors(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(split, sensor) of every split that has no chip of a sensor the manifest holds (see the module docstring)."""
    if not {"split", "sensor"} <= set(table.columns):
        return []
    present = set(zip(table["split"].astype(str), table["sensor"].astype(str), strict=True))
    sensors = sorted(set(table["sensor"].astype(str)))
    return [(split, sensor) for sensor in sensors for split in SPLITS if (split, sensor) not in present]


def paired_not_applicable(table: pd.DataFrame) -> str | None:
    """Why the paired share means nothing for this manifest (no S1 or RGB chip to pair), or None when it does."""
    if "paired_pairable" not in table.columns or table["paired_pairable"].notna().any():
        return None
    return "no S1 or RGB chips in the manifest (an S2-only corpus?): no chip needs a partner, so no share is measured"


def pairs_checks(gates: GatesParams, pair: PairParams, table: pd.DataFrame) -> list[Check]:
    """The pairs suite over `table` (see the module docstring)."""
    import great_expectations as gx

    ex = gx.expectations
    sensors = sorted(set(table["sensor"].astype(str))) if "sensor" in table.columns else []
    missing = missing_split_sensors(table)
    absent = ", ".join(f"no {split} chips of {sensor}" for split, sensor in missing) or "every split has every sensor"
    paired = []
    if paired_not_applicable(table) is None:  # a mean over no S1/RGB chip would be NaN: no check, a reason instead
        paired = [
            Check(
                "paired_fraction",
                ex.ExpectColumnMeanToBeBetween(
                    column="paired_pairable", min_value=gates.min_paired_fraction, max_value=1
                ),
                f"share of S1/RGB chips with a partner below gates.min_paired_fraction {gates.min_paired_fraction}",
                "dataset",
            )
        ]
    return [
        Check(
            "schema",
            ex.ExpectTableColumnsToMatchSet(column_set=list(MANIFEST_COLUMNS), exact_match=False),
            "manifest columns differ from " + ", ".join(MANIFEST_COLUMNS),
            "dataset",
        ),
        Check("unique_ids", ex.ExpectColumnValuesToBeUnique(column="id"), "duplicate chip id {id}", "dataset"),
        Check("split_known", ex.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)), "unknown split"),
        Check(
            "splits_complete",
            ex.ExpectColumnDistinctValuesToContainSet(
                column="split_sensor", value_set=[f"{sp}/{se}" for se in sensors for sp in SPLITS]
            ),
            f"{absent}: pretraining and fine-tuning train, validate and test on every sensor "
            "(see pair.block_m, pair.val_fraction and pair.test_fraction)",
            "dataset",
        ),
        Check(
            "splits_disjoint",
            ex.ExpectColumnValuesToBeInSet(column="split_disjoint", value_set=[True]),
            "{split} chip footprint intersects {clash_splits} chips",
            "dataset",
        ),
        Check(
            "train_has_classes",
            ex.ExpectColumnValuesToBeInSet(column="train_has_classes", value_set=[True]),
            "no train chip has a land-cover class: fine-tuning would learn none (see pair.label_min_fraction)",
            "dataset",
        ),
        *paired,
        Check(
            "in_store",
            ex.ExpectColumnValuesToBeInSet(column="in_store", value_set=[True]),
            "store_index outside the store",
        ),
        Check(
            "partner_ok",
            ex.ExpectColumnValuesToBeInSet(column="partner_ok", value_set=[True]),
            "partner {partner_id} is not a chip of the manifest",
        ),
        Check(
            "stats_finite",
            ex.ExpectColumnValuesToBeInSet(column="stats_finite", value_set=[True]),
            "non-finite chip statistics (mean {mean}, std {std})",
        ),
        Check(
            "nodata_fraction",
            ex.ExpectColumnValuesToBeBetween(column="nodata_fraction", min_value=0, max_value=pair.max_nodata_fraction),
            "nodata fraction {nodata_fraction:.3f} > " + f"pair.max_nodata_fraction {pair.max_nodata_fraction}",
        ),
        Check(
            "cloud_fraction",
            ex.ExpectColumnValuesToBeBetween(column="cloud_fraction", min_value=0, max_value=1),
            "cloud fraction {cloud_fraction} outside [0, 1]",
        ),
    ]


def validate_pairs(
    pair: PairParams,
    gates: GatesParams,
    *,
    gates_dir: str | Path,
    reports_dir: str | Path,
) -> GateResult:
    """Build the pairs table, run the suite, write {gates_dir}/pairs.parquet and the report."""
    table = build_pairs_table(pair.manifest, pair.out_dir)
    result = run_gate("pairs", table, pairs_checks(gates, pair, table), min_pass_rate=gates.min_pass_rate)
    if "split" in table.columns:
        result.report["chips_by_split"] = {k: int(v) for k, v in table["split"].value_counts().items()}
        result.report["chips_by_sensor"] = {k: int(v) for k, v in table["sensor"].value_counts().items()}
        result.report["splits_missing"] = [f"{split}/{sensor}" for split, sensor in missing_split_sensors(table)]
    if "missing_in_train" in table.columns:
        result.report["classes_absent_from_train"] = absent_classes(table)
    if "paired_pairable" in table.columns:
        reason = paired_not_applicable(table)
        share = None if reason else round(float(np.nanmean(table["paired_pairable"])), 4)
        result.report["paired_fraction"] = share
        result.report["paired_fraction_not_applicable"] = reason
    write_gate(result, gates_dir=gates_dir, reports_dir=reports_dir)
    return result
