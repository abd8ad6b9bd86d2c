"""Per-chip statistics of a model's outputs on a split, from which every task metric is recomputed under weights.

`chip_stats` keeps what each task's metrics are made of, chip by chip: the classification scores and
labels, the segmentation confusion matrix, the image metrics of each image (msgfm.metrics.per_image).
`ChipStats.statistic(weights)` then gives every scalar metric for a `(resamples, chips)` weight matrix
(msgfm.evaluation.intervals): a weight of ones reproduces the torchmetrics values of msgfm.metrics
(tests/test_evaluation_intervals.py), a bootstrap weight gives one resample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from msgfm.datasets.tasks import IGNORE_INDEX, TaskSpec
from msgfm.metrics import per_image

THRESHOLD = 0.5
"""Classification: a class is predicted present when its probability is above this (F1, as torchmetrics)."""


@dataclass(frozen=True)
class ChipStats:
    """What a task's metrics are made of, one entry per chip."""

    task: str
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def statistic(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every scalar metric of the task for each row of chip weights (resamples, chips)."""
        if self.task == "classification":
            return _classification(self.arrays["scores"], self.arrays["target"], weights)
        if self.task == "segmentation":
            return _segmentation(self.arrays["confusion"], weights)
        total = weights.sum(1)
        out = {name: weights @ v / total for name, v in self.arrays.items() if name != "MSE"}
        if "MSE" in self.arrays:
            out["RMSE"] = np.sqrt(weights @ self.arrays["MSE"] / total)
        return out


def chip_stats(spec: TaskSpec, num_classes: int, outputs: torch.Tensor, target: torch.Tensor) -> ChipStats:
    """Per-chip statistics of `outputs` (logits, or images in metric space) against the target."""
    if spec.kind == "multilabel":
        scores = outputs.detach().float().sigmoid().numpy().astype(np.float64)
        return ChipStats(spec.name, {"scores": scores, "target": target.numpy().astype(np.float64)})
    if spec.kind == "segmentation":
        pred = outputs.argmax(1).reshape(len(outputs), -1).numpy()
        true = target.reshape(len(target), -1).long().numpy()
        valid = (true != IGNORE_INDEX) & (true < num_classes)
        flat = np.where(valid, true * num_classes + pred, num_classes * num_classes)
        confusion = np.stack([np.bincount(row, minlength=num_classes**2 + 1)[:-1] for row in flat])
        return ChipStats(spec.name, {"confusion": confusion.astype(np.float64)})
    values = per_image(spec.name, outputs.float(), target.float())
    return ChipStats(spec.name, {k: v.double().numpy() for k, v in values.items()})


def _weighted_ap(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (sum over thresholds of recall step x precision) per weight row; ties share a threshold."""
    order = np.argsort(-scores, kind="stable")
    s, y, w = scores[order], labels[order], weights[:, order]
    tp = np.cumsum(w * y, axis=1)
    seen = np.cumsum(w, axis=1)
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each run of equal scores
    end = ends[np.searchsorted(ends, np.arange(len(s)))]
    precision = np.divide(tp[:, end], seen[:, end], out=np.zeros_like(tp), where=seen[:, end] > 0)
    positives = (w * y).sum(1)
    ap = (w * y * precision).sum(1)
    return np.divide(ap, positives, out=np.zeros_like(ap), where=positives > 0)  # no positive: 0, as torchmetrics


def _classification(scores: np.ndarray, target: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """mAP micro/macro and F1 micro/macro (threshold 0.5) under chip weights."""
    k = scores.shape[1]
    micro = _weighted_ap(scores.ravel(), target.ravel(), np.repeat(weights, k, axis=1))
    macro = np.mean([_weighted_ap(scores[:, c], target[:, c], weights) for c in range(k)], axis=0)
    pred = (scores > THRESHOLD).astype(np.float64)
    tp, fp, fn = weights @ (pred * target), weights @ (pred * (1 - target)), weights @ ((1 - pred) * target)

    def f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
        denom = 2 * tp + fp + fn
        return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)

    return {"mAP_micro": micro, "mAP_macro": macro, "F1_micro": f1(tp.sum(1), fp.sum(1), fn.sum(1)),
            "F1_macro": f1(tp, fp, fn).mean(1)}  # fmt: skip


def _segmentation(confusion: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """mIoU (classes absent from both prediction and target left out, as torchmetrics) and OA under chip weights."""
    k = int(round(np.sqrt(confusion.shape[1])))
    matrix = (weights @ confusion).reshape(-1, k, k)
    tp = np.diagonal(matrix, axis1=1, axis2=2)
    union = matrix.sum(1) + matrix.sum(2) - tp
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)
    occurs = union > 0
    miou = np.divide((iou * occurs).sum(1), occurs.sum(1), out=np.full(len(tp), np.nan), where=occurs.sum(1) > 0)
    total = matrix.sum((1, 2))
    oa = np.divide(tp.sum(1), total, out=np.full(len(tp), np.nan), where=total > 0)
    return {"mIoU": miou, "OA": oa}
