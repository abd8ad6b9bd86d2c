"""A task model over a split of task data: its outputs, its metrics and its encoder's features, batch by batch.

Everything here runs in eval mode without gradients, so fine-tuning (validation each epoch, features of
a frozen encoder) and evaluation (test metrics, ablations, plots) score a model the same way. Batches go
to the model's device (bf16 autocast on GPU); outputs and metrics come back as float32 on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from msgfm.datasets.loaders import SplitLike, TaskBatch, split_loader
from msgfm.datasets.tasks import TaskData, TaskSplit
from msgfm.models.device import autocast, model_device, to_device
from msgfm.models.heads import TaskModel


def predict_batch(model: TaskModel, batch: TaskBatch, bands: dict[str, tuple[str, ...]]) -> torch.Tensor:
    """Outputs for one batch of samples with band names `bands` (eval mode, no gradients), float32 on the CPU."""
    model.eval()
    device = model_device(model)
    with torch.no_grad(), autocast(device):
        images, present = to_device((batch.images, batch.present), device)
        return model(images, bands, present=present).float().cpu()


def predict(model: TaskModel, split: SplitLike, batch_size: int, workers: int = 0) -> torch.Tensor:
    """Outputs for every sample of `split` in order (eval mode, no gradients)."""
    return torch.cat([predict_batch(model, b, split.bands) for b in split_loader(split, batch_size, workers=workers)])


def evaluate_split(
    model: TaskModel, data: TaskData, split: SplitLike, batch_size: int, workers: int = 0
) -> dict[str, Any]:
    """Metrics of `model` on `split` (image tasks on reflectance 0..1), read through a DataLoader of `workers`."""
    spec = data.spec
    metrics = spec.metrics(data.num_classes)
    model.eval()
    device = model_device(model)
    with torch.no_grad():
        for batch in split_loader(split, batch_size, workers=workers):
            target = batch.target
            with autocast(device):
                out = model(*to_device((batch.images, split.bands), device), present=to_device(batch.present, device))
            out = out.float().cpu()
            if spec.kind == "image":
                metrics.update(spec.to_metric_space(out), spec.to_metric_space(target))
            else:
                metrics.update(out, target.long())
    return metrics.compute()


def encode_split(model: TaskModel, split: TaskSplit, batch_size: int) -> dict[str, list[torch.Tensor]]:
    """Encoder features (no gradients) of every chip of `split`, per sensor and stage, on the model's device."""
    model.encoder.eval()
    device = model_device(model)
    parts: dict[str, list[list[torch.Tensor]]] = {sensor: [] for sensor in split.images}
    with torch.no_grad(), autocast(device):
        for start in range(0, len(split), batch_size):
            index = slice(start, min(start + batch_size, len(split)))
            images = {sensor: x[index].to(device) for sensor, x in split.images.items()}
            for sensor, levels in model.encoder(images, split.bands).features.items():
                parts[sensor].append([level.float() for level in levels])
    return {sensor: [torch.cat(level) for level in zip(*chunks, strict=True)] for sensor, chunks in parts.items()}
