"""The four downstream tasks' splits read from the embedded world's chip store (`build_task_data`).

Which chips anchor each task's samples, their partners (the S1 chip of an S2 chip, the DSM of an RGB chip, the
S1 chip closest in time to a cloudy S2 one), the label budget and the held-out sets: the task definitions and
the split containers are in msgfm.datasets.tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from msgfm.chips.store import ChipStore, ChipStoreError, open_accepted
from msgfm.datasets.holdouts import absent_classes, partition
from msgfm.datasets.pansharpen import wald_pansharpening_input
from msgfm.datasets.tasks import (
    IGNORE_INDEX,
    PAN_BANDS,
    REFLECTANCE_SCALE,
    TaskData,
    TaskDataError,
    TaskSplit,
    get_task,
    label_budget,
)
from msgfm.decisions import gate_table
from msgfm.sensors import get_sensor

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


def _read_with_partner(
    store: ChipStore, anchors: pd.DataFrame, anchor_sensor: str, partner_sensor: str, partner: np.ndarray
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, ...]], dict[str, torch.Tensor]]:
    """Images, bands and presence flags of anchor chips and their partners (zeros where absent)."""
    anchor = torch.from_numpy(store.read(anchor_sensor, anchors["store_index"].tolist()))
    n = len(anchors)
    bands = {anchor_sensor: store.bands(anchor_sensor), partner_sensor: store.bands(partner_sensor)}
    other = torch.zeros(n, len(bands[partner_sensor]), store.chip_px, store.chip_px)
    has = partner >= 0
    if has.any():
        other[torch.from_numpy(has)] = torch.from_numpy(store.read(partner_sensor, partner[has].tolist()))
    present = {anchor_sensor: torch.ones(n, dtype=torch.bool), partner_sensor: torch.from_numpy(has)}
    return {anchor_sensor: anchor, partner_sensor: other}, bands, present


def _georef(anchors: pd.DataFrame) -> dict[str, list]:
    """TaskSplit's georeference fields from manifest rows: each chip's CRS and bounds (empty without those columns)."""
    if not {"crs", "minx", "miny", "maxx", "maxy"} <= set(anchors.columns):
        return {}
    corners = anchors[["minx", "miny", "maxx", "maxy"]].to_numpy(dtype=float)
    return {"crs": [str(c) for c in anchors["crs"]], "bounds": [tuple(map(float, b)) for b in corners]}


def _classification(store: ChipStore, rows: pd.DataFrame, anchors: pd.DataFrame, codes: tuple[int, ...]) -> TaskSplit:
    images, bands, present = _read_with_partner(store, anchors, "s2", "s1", _partner_rows(rows, anchors, "s1"))
    target = torch.zeros(len(anchors), len(codes))
    for i, labels in enumerate(anchors["labels"]):
        for code in labels:
            if int(code) in codes:
                target[i, codes.index(int(code))] = 1.0
    return TaskSplit(images, bands, present, target, list(anchors["id"]), **_georef(anchors))


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


def _cloud_removal(store: ChipStore, rows: pd.DataFrame, anchors: pd.DataFrame, max_days: int) -> TaskSplit:
    # the S1 chip closest in time to the cloudy acquisition, as SEN12MS-CR pairs them: pairing gives S1 to
    # the S2 date it is closest to, which is often the clear one that follows a cloudy date
    s1 = nearest_in_time(rows, anchors, "s1", max_days)
    images, bands, present = _read_with_partner(store, anchors, "s2", "s1", s1)
    target = torch.from_numpy(store.read("s2", anchors["clear_index"].tolist()))
    return TaskSplit(images, bands, present, target, list(anchors["id"]), **_georef(anchors))


def _pansharpening(store: ChipStore, anchors: pd.DataFrame) -> TaskSplit:
    sensor = get_sensor("s2")
    order = [store.bands("s2").index(b) for b in PAN_BANDS]
    raw = store.raw("s2", anchors["store_index"].tolist())[:, order].astype(np.float32)
    reference = torch.from_numpy(raw / REFLECTANCE_SCALE)
    fused = wald_pansharpening_input(reference).clamp(0.0, 1.0).numpy() * REFLECTANCE_SCALE
    images = {"s2": torch.from_numpy(sensor.normalise(fused, PAN_BANDS))}
    target = torch.from_numpy(sensor.normalise(raw, PAN_BANDS))
    present = {"s2": torch.ones(len(anchors), dtype=torch.bool)}
    return TaskSplit(images, {"s2": PAN_BANDS}, present, target, list(anchors["id"]), **_georef(anchors))


def _segmentation(store: ChipStore, rows: pd.DataFrame, anchors: pd.DataFrame, codes: tuple[int, ...]) -> TaskSplit:
    images, bands, present = _read_with_partner(store, anchors, "rgb", "dsm", _partner_rows(rows, anchors, "dsm"))
    lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for i, code in enumerate(codes):
        lookup[code] = i
    labels = store.labels("fine", anchors["label_index"].tolist())
    return TaskSplit(images, bands, present, torch.from_numpy(lookup[labels]), list(anchors["id"]), **_georef(anchors))


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
) -> TaskData:
    """Train (label budget applied), val, test, holdout_aoi and later splits of `task` from the accepted chips."""
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

    build: Callable[[pd.DataFrame], TaskSplit]
    if task == "classification":
        build = lambda a: _classification(store, rows, a, codes)  # noqa: E731
    elif task == "cloud_removal":
        build = lambda a: _cloud_removal(store, rows, a, params.pair.max_days)  # noqa: E731
    elif task == "pansharpening":
        build = lambda a: _pansharpening(store, a)  # noqa: E731
    else:
        build = lambda a: _segmentation(store, rows, a, codes)  # noqa: E731
    splits = {}
    for name, part in parts.items():
        if part.empty:
            notes.setdefault(name, f"no {task} chips in {name}")
            continue
        splits[name] = build(part.reset_index(drop=True))
    return TaskData(spec=spec, splits=splits, class_codes=codes, notes=notes, absent=absent)
