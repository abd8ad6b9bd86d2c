"""A model (or a trivial predictor) scored on a split with the evidence behind each number.

`score` runs the model once and keeps both the torchmetrics values (msgfm.metrics) and the per-chip
statistics (msgfm.evaluation.chipstats); `Evidence` knows the split's independent units (chip positions or
spatial blocks, `evaluate.bootstrap_unit`), the fine-tuning seeds (`finetune.seeds`) and their bootstrap
draws, so `record` writes a metrics entry (the mean over seeds) with its n and seed x unit intervals and
`compare` a paired difference with its verdict; both take one Scored per seed. The trivial predictors of each task
(`TRIVIAL`) need no network: the class prior, the majority class, the input itself, HPF and bicubic fusion.
A streamed split (a real benchmark's, msgfm.datasets.streaming) is scored batch by batch (`score_batches`), so
it is never held whole; the metrics and per-chip statistics are the same as on the split in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from msgfm.datasets.loaders import SplitLike, TaskBatch, split_loader
from msgfm.datasets.pansharpen import wald_ms_upsampled
from msgfm.datasets.tasks import IGNORE_INDEX, TaskData, TaskSplit
from msgfm.evaluation.chipstats import ChipStats, chip_stats
from msgfm.evaluation.intervals import Comparison, Resamples, intervals, over_seeds, paired, resample
from msgfm.inference.predict import predict, predict_batch
from msgfm.metrics import METRIC_DIRECTIONS, PRIMARY_METRIC
from msgfm.models.heads import TaskModel

if TYPE_CHECKING:
    from msgfm.config import Params

TRIVIAL: dict[str, tuple[str, ...]] = {
    "classification": ("class_prior",),
    "cloud_removal": ("input",),
    "pansharpening": ("hpf", "bicubic"),
    "segmentation": ("majority_class",),
}
"""Each task's trivial baselines: predictors that look at no learned weights."""

Predictor = Callable[[TaskBatch], torch.Tensor]
"""Outputs (logits, or images in metric space) for a batch of samples."""


ABSENT_KEY = "absent_from_train"
"""Key of an entry's `{code: {class, chips | pixels, share}}`: classes of the split that no training chip has."""


@dataclass(frozen=True)
class Scored:
    """A model's metrics on a split (torchmetrics) and the per-chip statistics they are made of."""

    metrics: dict[str, Any]
    stats: ChipStats


@dataclass(frozen=True)
class Evidence:
    """The independent units of one split and their bootstrap draws."""

    draws: Resamples
    n: dict[str, Any]
    absent: dict[str, Any] | None = None
    """The split's classes that no training chip has (TaskData.absent), None for a task without classes."""
    min_effect: dict[str, float] = field(default_factory=dict)
    """The minimum meaningful gain per primary metric (params evaluate.min_effect)."""

    def record(self, scored: Scored | Sequence[Scored]) -> dict[str, Any]:
        """The split's scalar metrics (the mean over fine-tuning seeds), n (chips, positions, blocks, the bootstrap
        unit, seeds), each metric's interval (seed x unit) and, for a task with classes, the classes absent from
        training (unscored: the model has no output for them)."""
        runs = self._seeds(scored)
        found = intervals(over_seeds([r.stats.statistic for r in runs]), self.draws)
        values = {k: float(np.mean([float(r.metrics[k]) for r in runs])) for k in runs[0].metrics
                  if k in METRIC_DIRECTIONS}  # fmt: skip
        record = {**values, "n": dict(self.n), "ci": {k: found[k].bounds() for k in values if k in found}}
        return record if self.absent is None else {**record, ABSENT_KEY: dict(self.absent)}

    def compare(self, first: Scored | Sequence[Scored], second: Scored | Sequence[Scored], task: str) -> Comparison:
        """The gain of `first` over `second` on the task's primary metric (paired over the same chips and seeds)."""
        metric = PRIMARY_METRIC[task]
        a, b = (over_seeds([r.stats.statistic for r in self._seeds(x)]) for x in (first, second))
        return paired(a, b, self.draws, metric, METRIC_DIRECTIONS[metric], self.min_effect.get(metric, 0.0))

    def _seeds(self, scored: Scored | Sequence[Scored]) -> list[Scored]:
        """One Scored per fine-tuning seed: a single one (a trivial baseline, deterministic) stands for every seed."""
        runs = [scored] if isinstance(scored, Scored) else list(scored)
        if len(runs) == 1:
            runs = runs * self.draws.seeds
        if len(runs) != self.draws.seeds:
            raise ValueError(f"{len(runs)} scored runs for {self.draws.seeds} fine-tuning seeds")
        return runs


def evidence(params: Params, rows: pd.DataFrame, split: TaskSplit, absent: dict[str, Any] | None = None) -> Evidence:
    """Units of the split's chips (from the manifest rows, by chip id), their seeded bootstrap draws, and the
    split's classes absent from training (`absent`, recorded with every entry)."""
    cfg = params.evaluate
    unlisted = sorted(set(PRIMARY_METRIC.values()) - set(cfg.min_effect))
    if unlisted:
        raise ValueError(f"params evaluate.min_effect has no minimum meaningful difference for {unlisted}")
    found = rows.drop_duplicates("id").set_index("id").reindex(split.ids)
    if found["aoi"].isna().any():
        missing = [i for i, a in zip(split.ids, found["aoi"], strict=True) if pd.isna(a)][:3]
        raise ValueError(f"{params.finetune.manifest}: chips {missing} of the split are not in the manifest")
    position = found["aoi"].astype(str) + "/" + found["grid"].astype(str) + "/" + found["row"].astype(str)
    position = position + "/" + found["col"].astype(str)
    block = found["aoi"].astype(str) + "/" + found["block"].astype(str)
    units = position if cfg.bootstrap_unit == "position" else block
    seeds = len(params.finetune.seeds)
    draws = resample(list(units), cfg.bootstrap_resamples, params.seed, cfg.confidence, seeds)
    n = {"chips": len(split), "positions": int(position.nunique()), "blocks": int(block.nunique()),
         "unit": cfg.bootstrap_unit, "seeds": seeds}  # fmt: skip
    return Evidence(draws, n, absent, dict(cfg.min_effect))


def score_outputs(data: TaskData, split: TaskSplit, outputs: torch.Tensor) -> Scored:
    """Metrics and per-chip statistics of outputs: logits, or images in metric space (reflectance 0..1)."""
    spec = data.spec
    metrics = spec.metrics(data.num_classes)
    target = spec.to_metric_space(split.target) if spec.kind == "image" else split.target
    metrics.update(outputs, target if spec.kind == "image" else target.long())
    return Scored(metrics.compute(), chip_stats(spec, data.num_classes, outputs, target))


def score(model: TaskModel, data: TaskData, split: TaskSplit, batch_size: int) -> Scored:
    """Run the model once over the split and score its outputs."""
    outputs = predict(model, split, batch_size)
    return score_outputs(data, split, data.spec.to_metric_space(outputs) if data.spec.kind == "image" else outputs)


def score_batches(data: TaskData, split: SplitLike, predictor: Predictor, batch_size: int, workers: int = 0) -> Scored:
    """Metrics and per-chip statistics of `predictor`'s outputs, read batch by batch through a DataLoader of
    `workers` (a streamed split is never held whole)."""
    spec, metrics, parts = data.spec, data.spec.metrics(data.num_classes), []
    for batch in split_loader(split, batch_size, workers=workers):
        outputs = predictor(batch)
        target = spec.to_metric_space(batch.target) if spec.kind == "image" else batch.target
        metrics.update(outputs, target if spec.kind == "image" else target.long())
        parts.append(chip_stats(spec, data.num_classes, outputs, target))
    arrays = {k: np.concatenate([p.arrays[k] for p in parts]) for k in parts[0].arrays}
    return Scored(metrics.compute(), ChipStats(spec.name, arrays))


def model_predictor(model: TaskModel, data: TaskData, bands: dict[str, tuple[str, ...]]) -> Predictor:
    """The model's outputs on a batch of samples with band names `bands`, image outputs in metric space."""

    def outputs(batch: TaskBatch) -> torch.Tensor:
        out = predict_batch(model, batch, bands)
        return data.spec.to_metric_space(out) if data.spec.kind == "image" else out

    return outputs


def _train_targets(data: TaskData, batch_size: int, workers: int) -> Iterator[torch.Tensor]:
    """The labelled training targets: all at once for a split in memory, batch by batch for a streamed one."""
    train = data.splits["train"]
    if isinstance(train, TaskSplit):
        yield train.target
        return
    for batch in split_loader(train, batch_size, workers=workers):
        yield batch.target


def trivial_predictor(name: str, data: TaskData, batch_size: int = 32, workers: int = 0) -> Predictor:
    """Trivial predictor `name` on a batch (logits, or images in metric space); the class prior and the majority
    class are counted once over the labelled training split."""
    spec, k = data.spec, data.num_classes
    if name == "class_prior":  # the labelled training chips' class frequencies, for every chip
        targets = torch.cat(list(_train_targets(data, batch_size, workers)))
        prior = torch.logit(targets.float().mean(0).clamp(1e-4, 1 - 1e-4))
        return lambda batch: prior.expand(len(batch.target), -1).clone()
    if name == "majority_class":  # the most frequent class of the labelled training pixels, everywhere
        counts = torch.zeros(k, dtype=torch.long)
        for t in _train_targets(data, batch_size, workers):
            counts += torch.bincount(t[(t != IGNORE_INDEX) & (t < k)].long(), minlength=k)
        majority = int(counts.argmax())

        def constant(batch: TaskBatch) -> torch.Tensor:
            logits = torch.zeros(len(batch.target), k, *batch.target.shape[-2:])
            logits[:, majority] = 1.0
            return logits

        return constant
    if name in ("input", "hpf"):  # the cloudy chip; the HPF-fused MS the network corrects
        return lambda batch: spec.to_metric_space(
            batch.images[spec.residual][:, [batch.bands[spec.residual].index(b) for b in spec.out_bands]]
        )
    if name == "bicubic":  # the degraded MS upsampled bicubically, no PAN detail
        return lambda batch: wald_ms_upsampled(spec.to_metric_space(batch.target)).clamp(0.0, 1.0)
    raise ValueError(f"unknown trivial baseline {name!r}; known: {sorted({n for v in TRIVIAL.values() for n in v})}")


def trivial_outputs(name: str, data: TaskData, split: TaskSplit) -> torch.Tensor:
    """What trivial predictor `name` outputs on a split in memory (logits, or images in metric space)."""
    whole = TaskBatch(
        split.images, split.bands, split.present, split.target, torch.arange(len(split)), list(split.ids), [], []
    )
    return trivial_predictor(name, data)(whole)


def best_trivial_gap(task: str, comparisons: dict[str, dict[str, Any]]) -> list[str]:
    """The trivial baselines of the task the pretrained model is not shown to beat (verdict not "held")."""
    return [name for name in TRIVIAL[task] if comparisons.get(f"pretrained vs {name}", {}).get("verdict") != "held"]
