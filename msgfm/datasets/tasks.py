"""The four downstream tasks built on the embedded world's chip store: their specs and in-memory splits.

A `TaskSplit` (a split read into memory; msgfm.datasets.store_split streams one from the store) is a map-style
torch Dataset of TorchGeo-style sample dicts (msgfm.datasets.loaders), so training and evaluation batch it through
a DataLoader like the streamed benchmark splits.

Each task is a `TaskSpec` (inputs, target, loss, metrics); `build_task_data` (msgfm.datasets.task_chips) turns the
accepted chips of the manifest into `TaskSplit`s (train, val, test, and the generalisation sets):

- classification (BigEarthNet-like, multi-label): a clear S2 chip and its paired S1 chip (absent for
  S2 chips without a partner: a missing modality) -> the WorldCover classes present in the chip.
- cloud_removal (SEN12MS-CR-like): a cloudy S2 chip (cloud_fraction > 0) and the S1 chip at the same place
  closest in time to it (at most `pair.max_days` apart; absent otherwise) ->
  the clear S2 chip at the same position acquired next (the simulator gives every cloudy date a
  clear date `simulate.clear_partner_days` later); metrics on reflectance 0..1 (all 12 L2A bands).
- pansharpening, Wald's protocol built from S2: the 10 m bands B02, B03, B04, B08 of a clear chip
  are the reference; MS is that image degraded by 4 (block mean) and PAN is the mean of the four
  bands at 10 m. The encoder has no PAN band, so PAN enters as high-pass detail injected into the
  bicubically upsampled MS (MS_up + PAN - PAN_low, Schowengerdt's HPF fusion) and the network
  predicts a residual correction of that image, with learned band-wise gains of its detail
  (msgfm.models.heads.DetailInjection); metrics on reflectance 0..1 against the original.
- segmentation (Vaihingen-like): an RGB chip and its paired DSM chip (missing where unpaired) ->
  WorldCover classes per pixel on the fine grid; code 0 (unknown) is ignored.

Classes are the WorldCover codes present in the task's training chips (so no metric averages over a
class that cannot occur); their codes are saved with every checkpoint, and the classes of a held-out set
that training lacks are listed in `TaskData.absent`. Sets (msgfm.datasets.holdouts): train/val/test, the
held-out AOIs (`finetune.holdout_aois`, never in train/val) and the later dates (val/test chips dated after
`finetune.train_until`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from msgfm.datasets.loaders import Sample, make_sample
from msgfm.datasets.pansharpen import PAN_RATIO
from msgfm.metrics import (
    TaskMetrics,
    classification_metrics,
    cloud_removal_metrics,
    pansharpening_metrics,
    segmentation_metrics,
)
from msgfm.sensors import S2_L2A_BANDS, SENTINEL2, get_sensor

if TYPE_CHECKING:
    pass

TASKS: tuple[str, ...] = ("classification", "cloud_removal", "pansharpening", "segmentation")
"""The four downstream tasks, in the order stages and reports list them."""

PAN_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08")
"""The 10 m S2 bands that form the MS image (and, averaged, the PAN image) of pan-sharpening."""
IGNORE_INDEX = 255
"""Segmentation target value of unknown pixels (WorldCover code 0), ignored by loss and metrics."""
REFLECTANCE_SCALE = SENTINEL2.full_scale
"""S2 digital numbers per unit reflectance."""


class TaskDataError(RuntimeError):
    """A task cannot be built from the chips; the message names the file or what is missing."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task feeds the network and how its output is scored."""

    name: str
    inputs: tuple[str, ...]
    kind: str  # "multilabel", "image", "segmentation"
    out_sensor: str | None = None
    out_bands: tuple[str, ...] = ()
    residual: str | None = None
    detail_ratio: int | None = None  # the head learns band-wise gains of the residual input's detail above 1/ratio
    grid: str = "s10"

    def metrics(self, num_classes: int) -> TaskMetrics:
        """A fresh metrics collection for this task."""
        if self.name == "classification":
            return classification_metrics(num_classes)
        if self.name == "cloud_removal":
            return cloud_removal_metrics(1.0)
        if self.name == "pansharpening":
            return pansharpening_metrics(PAN_RATIO, 1.0)
        return segmentation_metrics(num_classes, ignore_index=IGNORE_INDEX)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss: BCE (multi-label), cross-entropy (segmentation), L1 in normalised units (images)."""
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(output, target)
        if self.kind == "segmentation":
            return F.cross_entropy(output, target.long(), ignore_index=IGNORE_INDEX)
        return F.l1_loss(output, target)

    def to_metric_space(self, output: torch.Tensor) -> torch.Tensor:
        """Network output (or a target) -> what the metrics take: image tasks in 0..1 (value / sensor full_scale)."""
        if self.kind != "image":
            return output
        sensor = get_sensor(self.out_sensor)
        mean, std = sensor.stats(self.out_bands)
        mean_t = torch.as_tensor(mean, dtype=output.dtype, device=output.device)[:, None, None]
        std_t = torch.as_tensor(std, dtype=output.dtype, device=output.device)[:, None, None]
        return ((output * std_t + mean_t) / sensor.full_scale).clamp(0.0, 1.0)


TASK_SPECS: dict[str, TaskSpec] = {
    "classification": TaskSpec("classification", ("s2", "s1"), "multilabel"),
    "cloud_removal": TaskSpec(
        "cloud_removal", ("s2", "s1"), "image", out_sensor="s2", out_bands=S2_L2A_BANDS, residual="s2"
    ),
    "pansharpening": TaskSpec(
        "pansharpening", ("s2",), "image", out_sensor="s2", out_bands=PAN_BANDS, residual="s2", detail_ratio=PAN_RATIO
    ),
    "segmentation": TaskSpec("segmentation", ("rgb", "dsm"), "segmentation", grid="fine"),
}
"""Task name -> spec."""


def get_task(name: str) -> TaskSpec:
    """The spec of task `name`; the error lists the known tasks."""
    try:
        return TASK_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; tasks are {list(TASKS)}") from None


@dataclass
class TaskSplit:
    """Samples of one split in memory: per-sensor images (normalised), presence flags, targets, chip ids and
    georeference (each chip's CRS and bounds, empty where unknown)."""

    images: dict[str, torch.Tensor]
    bands: dict[str, tuple[str, ...]]
    present: dict[str, torch.Tensor]
    target: torch.Tensor
    ids: list[str] = field(default_factory=list)
    crs: list[str] = field(default_factory=list)
    bounds: list[tuple[float, float, float, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def __getitem__(self, index: int) -> Sample:
        """Sample `index` as a TorchGeo-style dict (msgfm.datasets.loaders)."""
        return make_sample(
            {s: x[index] for s, x in self.images.items()},
            self.bands,
            {s: bool(p[index]) for s, p in self.present.items()},
            self.target[index],
            sample_id=self.ids[index] if self.ids else str(index),
            index=index,
            crs=self.crs[index] if self.crs else None,
            bounds=self.bounds[index] if self.bounds else None,
        )

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> TaskSplit:
        """The samples at `index`, in that order."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return TaskSplit(
            images={s: x[idx] for s, x in self.images.items()},
            bands=dict(self.bands),
            present={s: p[idx] for s, p in self.present.items()},
            target=self.target[idx],
            ids=[self.ids[i] for i in idx.tolist()] if self.ids else [],
            crs=[self.crs[i] for i in idx.tolist()] if self.crs else [],
            bounds=[self.bounds[i] for i in idx.tolist()] if self.bounds else [],
        )

    def only(self, sensors: Sequence[str]) -> TaskSplit:
        """The same samples with only the inputs of `sensors` (the others left out, not zero-filled)."""
        keep = [s for s in self.images if s in sensors]
        return dataclasses.replace(
            self,
            images={s: self.images[s] for s in keep},
            bands={s: self.bands[s] for s in keep},
            present={s: self.present[s] for s in keep},
        )

    def batch(self, index: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """(images, present, target) of the samples at `index`; sensors absent from every sample are left out."""
        present = {s: p[index] for s, p in self.present.items()}
        keep = [s for s in self.images if bool(present[s].any())]
        return {s: self.images[s][index] for s in keep}, {s: present[s] for s in keep}, self.target[index]


@dataclass
class TaskData:
    """A task's splits plus what a checkpoint must remember to read its outputs (class codes)."""

    spec: TaskSpec
    splits: dict[str, TaskSplit]  # or, for a real benchmark, streamed splits (msgfm.datasets.streaming)
    class_codes: tuple[int, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)
    absent: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per held-out set, the classes it holds that no training chip has (msgfm.datasets.holdouts.absent_classes)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_codes)

    def only(self, sensors: Sequence[str]) -> TaskData | str:
        """The task fed only the inputs an encoder has trained embeddings for (`sensors`), or why it cannot
        run on them (none of its inputs, or not the sensor its output corrects)."""
        kept = tuple(s for s in self.spec.inputs if s in sensors)
        if kept == self.spec.inputs:
            return self
        if not kept or (self.spec.residual and self.spec.residual not in kept):
            return (
                f"{self.spec.name} needs {list(self.spec.inputs)}; the encoder was pretrained on {list(sensors)} only"
            )
        dropped = [s for s in self.spec.inputs if s not in kept]
        notes = {**self.notes, "inputs": f"{dropped} left out: the encoder has no trained embedding for them"}
        return TaskData(
            dataclasses.replace(self.spec, inputs=kept),
            {name: split.only(kept) for name, split in self.splits.items()},
            self.class_codes,
            notes,
            self.absent,
        )


def label_budget(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction * n) (at least 1) of n samples, drawn without replacement with `seed`."""
    if n <= 0:
        raise TaskDataError("no training samples to draw a label budget from")
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    k = min(n, max(1, int(round(fraction * n))))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
