"""The four downstream tasks' splits read from the embedded world's chip store (`build_task_data`).

Which chips anchor each task's samples, their partners (the S1 chip of an S2 chip, the DSM of an RGB chip, the
S1 chip closest in time to a cloudy S2 one), the label budget and the held-out sets: the task definitions and
the split containers are in msgfm.datasets.tasks; a split is first a StoreSplit (store indices,
msgfm.datasets.store_split), then read into memory unless it is to be streamed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from msgfm.chips.store import ChipStore, ChipStoreError, open_accepted
from msgfm.datasets.holdouts import absent_classes, partition
from msgfm.datasets.store_split import StoreSplit
from msgfm.datasets.tasks import (
    IGNORE_INDEX,
    TaskData,
    TaskDataError,
    TaskSplit,
    get_task,
    label_budget,
)
from msgfm.decisions import gate_table

if TYPE_CHECKING:
    from msgfm.config import Params


def accepted_chips(params: Params) -> tuple[ChipStore, pd.DataFrame]:
    """The chip store and the manifest rows of the chips validate_pairs accepted."""
    cfg = params.finetune
    try:
        store, rows = open_accepted(cfg.chips_dir, cfg.manifest, gate_table(params.gates.dir, "pairs"))
    except ChipStoreError as e:
        raise TaskDataError(str(e)) from None
    rows["day"] = pd.to_datetime(rows["date"]).dt.date
    return store, rows.reset_index(drop=True)


def _partner_rows(rows: pd.DataFrame, anchors: pd.DataFrame, sensor: str) -> np.ndarray:
    """Store index of each anchor's accepted partner chip of `sensor`, -1 where it has none."""
    mine = rows[rows["sensor"] == sensor]
    index = dict(zip(mine["id"], mine["store_index"], strict=True))
    pairs = zip(anchors["partner_id"], anchors["partner_sensor"], strict=True)
    out = [int(index.get(p, -1)) if ps == sensor else -1 for p, ps in pairs]
    return np.array(out, dtype=np.int64)


def _georef(anchors: pd.DataFrame) -> dict[str, list]:
    """A split's georeference fields from manifest rows: each chip's CRS and bounds (empty without those columns)."""
    if not {"crs", "minx", "miny", "maxx", "maxy"} <= set(anchors.columns):
        return {}
    corners = anchors[["minx", "miny", "maxx", "maxy"]].to_numpy(dtype=float)
    return {"crs": [str(c) for c in anchors["crs"]], "bounds": [tuple(map(float, b)) for b in corners]}


def _multi_hot(anchors: pd.DataFrame, codes: tuple[int, ...]) -> torch.Tensor:
    """Classification targets: one row per anchor, 1 for each training class its `labels` list."""
    target = torch.zeros(len(anchors), len(codes))
    for i, labels in enumerate(anchors["labels"]):
        for code in labels:
            if int(code) in codes:
                target[i, codes.index(int(code))] = 1.0
    return target


def nearest_in_time(rows: pd.DataFrame, anchors: pd.DataFrame, sensor: str, max_days: int) -> np.ndarray:
    """Store index of the `sensor` chip at each anchor's place closest in time (at most `max_days`), -1 if none."""
    key = ["aoi", "grid", "row", "col"]
    other = rows.loc[rows["sensor"] == sensor, [*key, "day", "store_index"]]
    joined = anchors[[*key, "day"]].reset_index(drop=True).reset_index(names="anchor")
    joined = joined.merge(other, on=key, suffixes=("", "_other"))
    joined["gap"] = (pd.to_datetime(joined["day_other"]) - pd.to_datetime(joined["day"])).dt.days.abs()
    joined = joined[joined["gap"] <= max_days].sort_values(["anchor", "gap", "day_other"])
    joined = joined.drop_duplicates("anchor")
    out = np.full(len(anchors), -1, dtype=np.int64)
    out[joined["anchor"].to_numpy(dtype=np.int64)] = joined["store_index"].to_numpy(dtype=np.int64)
    return out


def _class_lookup(codes: tuple[int, ...]) -> np.ndarray:
    """WorldCover code -> class index of a segmentation target (IGNORE_INDEX for codes not among `codes`)."""
    lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for i, code in enumerate(codes):
        lookup[code] = i
    return lookup


def _store_split(
    task: str, store: ChipStore, rows: pd.DataFrame, anchors: pd.DataFrame, codes: tuple[int, ...], max_days: int
) -> StoreSplit:
    """The samples of `task` that start from `anchors`, as store indices (their pixels read when asked)."""
    common = {"store": store, "task": task, "ids": list(anchors["id"]), **_georef(anchors)}
    anchor = anchors["store_index"].to_numpy(dtype=np.int64)
    if task == "classification":
        partner = _partner_rows(rows, anchors, "s1")
        return StoreSplit(
            anchor_sensor="s2",
            anchor=anchor,
            partner_sensor="s1",
            partner=partner,
            labels=_multi_hot(anchors, codes),
            **common,
        )
    if task == "cloud_removal":
        # the S1 chip closest in time to the cloudy acquisition, as SEN12MS-CR pairs them: pairing gives S1 to
        # the S2 date it is closest to, which is often the clear one that follows a cloudy date
        partner = nearest_in_time(rows, anchors, "s1", max_days)
        clear = anchors["clear_index"].to_numpy(dtype=np.int64)
        return StoreSplit(
            anchor_sensor="s2", anchor=anchor, partner_sensor="s1", partner=partner, target_index=clear, **common
        )
    if task == "pansharpening":
        return StoreSplit(anchor_sensor="s2", anchor=anchor, **common)
    partner = _partner_rows(rows, anchors, "dsm")
    labels = anchors["label_index"].to_numpy(dtype=np.int64)
    return StoreSplit(
        anchor_sensor="rgb",
        anchor=anchor,
        partner_sensor="dsm",
        partner=partner,
        target_index=labels,
        lookup=_class_lookup(codes),
        **common,
    )


def _anchors(task: str, rows: pd.DataFrame, max_cloud: float, clear_days: int) -> pd.DataFrame:
    """The chips each sample of `task` starts from (one sample per row)."""
    if task in ("classification", "pansharpening"):
        return rows[(rows["sensor"] == "s2") & (rows["cloud_fraction"] <= max_cloud)]
    if task == "segmentation":
        return rows[rows["sensor"] == "rgb"]
    s2 = rows[rows["sensor"] == "s2"]
    clear = s2[s2["cloud_fraction"] <= max_cloud]
    cloudy = s2[s2["cloud_fraction"] > max_cloud]
    key = ["aoi", "grid", "row", "col"]
    joined = cloudy.merge(clear[[*key, "day", "store_index"]], on=key, suffixes=("", "_clear"))
    gap = (pd.to_datetime(joined["day_clear"]) - pd.to_datetime(joined["day"])).dt.days
    joined = joined[(gap > 0) & (gap <= clear_days)].assign(gap=gap)
    joined = joined.sort_values([*key, "day", "gap"]).drop_duplicates("id")
    return joined.rename(columns={"store_index_clear": "clear_index"}).drop(columns=["day_clear", "gap"])


def build_task_data(
    params: Params,
    task: str,
    label_fraction: float | None = None,
    seed: int | None = None,
    loaded: tuple[ChipStore, pd.DataFrame] | None = None,
    stream: bool = False,
) -> TaskData:
    """Train (label budget applied), val, test, holdout_aoi and later splits of `task` from the accepted chips:
    read into memory, or with `stream` as StoreSplits whose samples are read from the store when asked."""
    spec = get_task(task)
    cfg = params.finetune
    store, rows = loaded if loaded is not None else accepted_chips(params)
    anchors = _anchors(task, rows, cfg.max_cloud_fraction, cfg.clear_within_days).reset_index(drop=True)
    if anchors.empty:
        raise TaskDataError(f"{cfg.manifest}: no accepted chips make a {task} sample")
    parts, notes = partition(anchors, cfg.holdout_aois, cfg.train_until, task)
    if parts["train"].empty:
        raise TaskDataError(f"{cfg.manifest}: no {task} training chips outside the held-out AOIs and dates")
    codes: tuple[int, ...] = ()
    if spec.kind == "multilabel":
        codes = tuple(sorted({int(c) for labels in parts["train"]["labels"] for c in labels if int(c) > 0}))
    elif spec.kind == "segmentation":
        present_codes = np.unique(store.labels("fine", parts["train"]["label_index"].tolist()))
        codes = tuple(int(c) for c in present_codes if c > 0)
    absent = absent_classes(spec.kind, parts, codes, store)
    fraction = cfg.label_fraction if label_fraction is None else label_fraction
    budget = label_budget(len(parts["train"]), fraction, params.seed if seed is None else seed)
    parts["train"] = parts["train"].iloc[budget]

    splits: dict[str, TaskSplit | StoreSplit] = {}
    for name, part in parts.items():
        if part.empty:
            notes.setdefault(name, f"no {task} chips in {name}")
            continue
        split = _store_split(task, store, rows, part.reset_index(drop=True), codes, params.pair.max_days)
        splits[name] = split if stream else split.materialise()
    return TaskData(spec=spec, splits=splits, class_codes=codes, notes=notes, absent=absent)
