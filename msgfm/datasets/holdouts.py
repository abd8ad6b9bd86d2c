"""Which samples of a task are trained on, which are held out, and what the held-out sets hold that training lacks.

`partition` cuts a task's samples (one manifest row each) into its sets:

- `train`, `val`, `test`: chips of the AOIs not held out, dated up to `finetune.train_until`, by the
  manifest's spatial-block split;
- `holdout_aoi`: every chip of `finetune.holdout_aois` (pretraining leaves them out too,
  `pretrain.exclude_holdout_aois`);
- `later`: the val and test chips dated after `train_until`, places no model trained on, so the set tests
  later dates rather than a training place seen again under its static labels. Train-place chips dated
  after `train_until` belong to no set.

`absent_classes` lists, per set, the classes that occur there but in no training chip and how much of the
set they cover. A model has no output for them, so the metrics cannot score them; evaluation reports them
(metrics JSON and report) instead of dropping them silently.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from msgfm.landcover import NODATA, SHORT_NAMES

if TYPE_CHECKING:
    from msgfm.chips.store import ChipStore

HELD_OUT_SPLITS = ("val", "test")
"""Manifest splits whose places no model trains on: the only places the later-date set may come from."""


def partition(
    anchors: pd.DataFrame, holdout_aois: list[str], train_until: dt.date | None, task: str
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The task's sets (see the module docstring) and notes on what could not be held out."""
    notes: dict[str, str] = {}
    split = anchors["split"].to_numpy()
    holdout = anchors["aoi"].isin(holdout_aois).to_numpy()
    dated_later = np.zeros(len(anchors), dtype=bool)
    if train_until is not None:
        dated_later = (anchors["day"] > train_until).to_numpy()
        if not (~holdout & ~dated_later & (split == "train")).any():
            notes["later"] = f"every {task} training chip is dated after {train_until}; later dates not held out"
            dated_later[:] = False
    inside = ~holdout & ~dated_later
    parts = {name: anchors[inside & (split == name)] for name in ("train", "val", "test")}
    parts["holdout_aoi"] = anchors[holdout]
    parts["later"] = anchors[~holdout & dated_later & np.isin(split, HELD_OUT_SPLITS)]
    return parts, notes


def absent_classes(
    kind: str, parts: dict[str, pd.DataFrame], codes: tuple[int, ...], store: ChipStore
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per set, `{code: {class, chips | pixels, share}}` of the classes present there but not among `codes`.

    Multi-label tasks count the set's chips carrying the class (share of its chips); segmentation counts
    its known pixels (share of the set's known pixels). Other kinds have no classes: empty.
    """
    if kind not in ("multilabel", "segmentation"):
        return {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, part in parts.items():
        if name == "train" or part.empty:
            continue
        if kind == "multilabel":
            counts = pd.Series([int(c) for labels in part["labels"] for c in set(labels)], dtype=np.int64)
            found, unit, total = counts.value_counts().to_dict(), "chips", len(part)
        else:
            labels = store.labels("fine", [i for i in part["label_index"].tolist() if i >= 0])
            values, counts = np.unique(labels[labels != NODATA], return_counts=True)
            found, unit, total = dict(zip(values.tolist(), counts.tolist(), strict=True)), "pixels", int(counts.sum())
        out[name] = {
            str(code): {"class": SHORT_NAMES.get(code, str(code)), unit: int(n), "share": round(n / max(total, 1), 4)}
            for code, n in sorted(found.items())
            if code != NODATA and code not in codes
        }
    return out
