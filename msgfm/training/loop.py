"""Fine-tuning of one task model with one trial's hyperparameters: AdamW with layer-wise lr decay, cosine schedule.

`train_model` trains on the task's training split for a number of epochs, scores the validation split
after each and keeps the weights of the best epoch. Batches come through a DataLoader over the split
(msgfm.datasets.loaders), in memory or streamed from files. A frozen encoder is run once over an in-memory
training split and only the head trains on its cached features (on a streamed split, features are
computed per batch without gradients).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from msgfm.datasets.loaders import EndlessBatches, TaskBatch, split_loader
from msgfm.datasets.tasks import TaskData, TaskSplit
from msgfm.inference.predict import encode_split, evaluate_split
from msgfm.metrics import METRIC_DIRECTIONS, PRIMARY_METRIC
from msgfm.models.device import autocast, model_device, to_device
from msgfm.models.heads import TaskModel
from msgfm.training.schedule import cosine_schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hyper:
    """One trial's hyperparameters."""

    lr: float
    weight_decay: float
    layer_decay: float
    freeze: bool
    batch_size: int


def param_groups(model: TaskModel, hp: Hyper) -> list[dict[str, Any]]:
    """AdamW groups: timm's layer-wise lr decay over the model's group_matcher (head at lr, stage i of n at
    lr * layer_decay^(n - i), embeddings at lr * layer_decay^(n + 1)); no weight decay on 1-d params.
    A frozen encoder leaves only the head."""
    if hp.freeze:
        params = list(model.head.parameters())
        groups = [
            {"params": [p for p in params if p.ndim > 1], "lr": hp.lr, "weight_decay": hp.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "lr": hp.lr, "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]
    groups = param_groups_layer_decay(model, weight_decay=hp.weight_decay, layer_decay=hp.layer_decay)
    return [{"params": g["params"], "lr": hp.lr * g["lr_scale"], "weight_decay": g["weight_decay"]} for g in groups]


def _loss(
    model: TaskModel,
    data: TaskData,
    batch: TaskBatch,
    cached: dict[str, list[torch.Tensor]] | None,
    frozen: bool,
    aux_weight: float,
) -> torch.Tensor:
    """The training loss of one batch; on a frozen encoder only the head trains, on its features cached for an
    in-memory split (`cached`) or computed without gradients for a streamed one."""
    bands = data.splits["train"].bands
    device = model_device(model)
    images, present, target = to_device((batch.images, batch.present, batch.target), device)
    with autocast(device):
        if frozen:
            if cached is not None:
                features = {sensor: [level[batch.index.to(device)] for level in cached[sensor]] for sensor in images}
            else:
                with torch.no_grad():
                    features = model.encoder(images, bands).features
            out, aux = model.head(features, images=images, bands=bands, present=present), 0.0
        else:
            out, aux = model(images, bands, present=present, return_aux=True)
    return data.spec.loss(out.float(), target) + aux_weight * aux


def train_model(
    model: TaskModel,
    data: TaskData,
    hp: Hyper,
    epochs: int,
    seed: int,
    min_steps_per_epoch: int = 1,
    eval_batch_size: int = 32,
    aux_weight: float = 0.01,
    on_epoch: Callable[[int, float], None] | None = None,
    workers: int = 0,
) -> tuple[float, dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Fine-tune on data.splits["train"], validate each epoch; returns (best val metric, its weights, history).

    Batches come from a DataLoader with `workers` processes (msgfm.datasets.loaders: seeded permutations
    carried across epochs). `on_epoch(epoch, value)` sees every epoch's validation primary metric (Optuna
    reports and prunes there).
    """
    train, val = data.splits["train"], data.splits["val"]
    metric = PRIMARY_METRIC[data.spec.name]
    better = (lambda a, b: a > b) if METRIC_DIRECTIONS[metric] == "max" else (lambda a, b: a < b)
    for p in model.encoder.parameters():
        p.requires_grad_(not hp.freeze)
    optimizer = torch.optim.AdamW(param_groups(model, hp))
    steps = max(min_steps_per_epoch, math.ceil(len(train) / hp.batch_size))
    scheduler = cosine_schedule(optimizer, epochs * steps)
    loader = split_loader(train, batches=EndlessBatches(len(train), hp.batch_size, seed), workers=workers)
    batches = iter(loader)
    cached = encode_split(model, train, eval_batch_size) if hp.freeze and isinstance(train, TaskSplit) else None
    best_value, best_state, history = math.nan, {}, []
    for epoch in range(epochs):
        model.train()
        if hp.freeze:
            model.encoder.eval()
        losses = []
        for _, batch in zip(range(steps), batches, strict=False):
            loss = _loss(model, data, batch, cached, hp.freeze, aux_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        value = float(evaluate_split(model, data, val, eval_batch_size, workers)[metric])
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), metric: value})
        log.info("%s epoch %d: train loss %.4f, val %s %.4f", data.spec.name, epoch, np.mean(losses), metric, value)
        if math.isnan(best_value) or better(value, best_value):
            best_value = value
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, value)
    del batches  # stops the loader's workers
    return best_value, best_state, history
