"""Downstream-task metrics, built on torchmetrics so they stream over batches.

One factory per task returns a `TaskMetrics` that is updated batch by batch and computed once. The
conventions follow the papers of each benchmark:
- scene classification (BigEarthNet): mAP micro and macro, F1 micro and macro at threshold 0.5;
- cloud removal (SEN12MS-CR): MAE, RMSE, PSNR, SSIM, SAM on reflectance in 0..1, SAM in degrees;
- pan-sharpening (Wald's protocol): PSNR, SAM (degrees), ERGAS, Q (the universal image quality index);
- semantic segmentation (ISPRS Vaihingen): mIoU, overall accuracy, per-class IoU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassJaccardIndex,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)
from torchmetrics.image import (
    ErrorRelativeGlobalDimensionlessSynthesis,
    PeakSignalNoiseRatio,
    SpectralAngleMapper,
    StructuralSimilarityIndexMeasure,
    UniversalImageQualityIndex,
)

Direction = Literal["max", "min"]

METRIC_DIRECTIONS: dict[str, Direction] = {
    "mAP_micro": "max",
    "mAP_macro": "max",
    "F1_micro": "max",
    "F1_macro": "max",
    "MAE": "min",
    "RMSE": "min",
    "PSNR": "max",
    "SSIM": "max",
    "SAM": "min",
    "ERGAS": "min",
    "Q": "max",
    "mIoU": "max",
    "OA": "max",
}
"""Whether a larger or a smaller value is better, for every scalar metric reported here."""

PRIMARY_METRIC: dict[str, str] = {
    "classification": "mAP_micro",
    "cloud_removal": "MAE",
    "pansharpening": "PSNR",
    "segmentation": "mIoU",
}
"""The metric each task is tuned on and compared by."""


class _Degrees(Metric):
    """Spectral angle mapper in degrees (torchmetrics reports radians)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.sam = SpectralAngleMapper()

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.sam.update(preds, target)

    def compute(self) -> torch.Tensor:
        return self.sam.compute() * (180.0 / math.pi)

    def reset(self) -> None:
        super().reset()
        self.sam.reset()


class _PerImagePSNR(PeakSignalNoiseRatio):
    """PSNR averaged over images (the convention of SEN12MS-CR and pan-sharpening papers)."""

    def __init__(self, data_range: float) -> None:
        super().__init__(data_range=data_range, dim=(1, 2, 3), reduction="elementwise_mean")


@dataclass
class TaskMetrics:
    """Streaming metrics of one task: `update(preds, target)` per batch, then `compute()`."""

    task: str
    collection: MetricCollection
    per_class: dict[str, Metric] = field(default_factory=dict)
    transform: Literal["none", "sigmoid"] = "none"

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch. Classification takes logits; image tasks take values in the task's range."""
        preds = preds.detach().float()
        if self.transform == "sigmoid":
            preds = preds.sigmoid()
        target = target.detach()
        self.collection.update(preds, target)
        for metric in self.per_class.values():
            metric.update(preds, target)

    def compute(self) -> dict[str, float | list[float]]:
        """Scalar metrics by name, plus per-class lists where the task has them."""
        out: dict[str, float | list[float]] = {k: float(v) for k, v in self.collection.compute().items()}
        for name, metric in self.per_class.items():
            out[name] = [float(x) for x in metric.compute()]
        return out

    def reset(self) -> None:
        self.collection.reset()
        for metric in self.per_class.values():
            metric.reset()


def classification_metrics(num_classes: int, threshold: float = 0.5) -> TaskMetrics:
    """Multi-label scene classification: mAP micro/macro and F1 micro/macro; update with logits."""
    collection = MetricCollection(
        {
            "mAP_micro": MultilabelAveragePrecision(num_classes, average="micro"),
            "mAP_macro": MultilabelAveragePrecision(num_classes, average="macro"),
            "F1_micro": MultilabelF1Score(num_classes, threshold=threshold, average="micro"),
            "F1_macro": MultilabelF1Score(num_classes, threshold=threshold, average="macro"),
        }
    )
    return TaskMetrics("classification", collection, transform="sigmoid")


def cloud_removal_metrics(data_range: float = 1.0) -> TaskMetrics:
    """Cloud removal on reflectance in 0..data_range: MAE, RMSE, PSNR, SSIM, SAM (degrees)."""
    collection = MetricCollection(
        {
            "MAE": MeanAbsoluteError(),
            "RMSE": MeanSquaredError(squared=False),
            "PSNR": _PerImagePSNR(data_range),
            "SSIM": StructuralSimilarityIndexMeasure(data_range=data_range),
            "SAM": _Degrees(),
        }
    )
    return TaskMetrics("cloud_removal", collection)


def pansharpening_metrics(ratio: float = 4, data_range: float = 1.0) -> TaskMetrics:
    """Pan-sharpening under Wald's protocol: PSNR, SAM (degrees), ERGAS (with the GSD ratio), Q."""
    collection = MetricCollection(
        {
            "PSNR": _PerImagePSNR(data_range),
            "SAM": _Degrees(),
            "ERGAS": ErrorRelativeGlobalDimensionlessSynthesis(ratio=ratio),
            "Q": UniversalImageQualityIndex(),
        }
    )
    return TaskMetrics("pansharpening", collection)


def segmentation_metrics(num_classes: int, ignore_index: int | None = None) -> TaskMetrics:
    """Semantic segmentation: mIoU, overall accuracy and per-class IoU; update with (B, K, H, W) logits."""
    collection = MetricCollection(
        {
            "mIoU": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
            "OA": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
        }
    )
    per_class = {"IoU_per_class": MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index)}
    return TaskMetrics("segmentation", collection, per_class=per_class)


def is_better(metric: str, candidate: float, reference: float, tolerance: float = 0.0) -> bool:
    """True when `candidate` is at least as good as `reference` minus a relative `tolerance`."""
    direction = METRIC_DIRECTIONS[metric]
    slack = abs(reference) * tolerance
    return candidate >= reference - slack if direction == "max" else candidate <= reference + slack


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics (named in METRIC_DIRECTIONS) of a metrics dict."""
    return {k: float(v) for k, v in metrics.items() if k in METRIC_DIRECTIONS}
