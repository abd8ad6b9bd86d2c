"""Fine-tuning of one task model with one trial's hyperparameters: AdamW with layer-wise lr decay, cosine schedule.

`train_model` trains on the task's training split for a number of epochs, scores the validation split
after each and keeps the weights of the best epoch. A frozen encoder is run once over the training
chips and only the head trains on its cached features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from msgfm.datasets.tasks import TaskData
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


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of sample indices: seeded permutations of 0..n-1, each batch full, carried across epochs."""
    order, cursor = torch.empty(0, dtype=torch.long), 0
    while True:
        if cursor + batch_size > len(order):
            order, cursor = torch.cat([order[cursor:], torch.randperm(n, generator=generator)]), 0
        yield order[cursor : cursor + batch_size]
        cursor += batch_size


def _loss(
    model: TaskModel,
    data: TaskData,
    index: torch.Tensor,
    cached: dict[str, list[torch.Tensor]] | None,
    aux_weight: float,
) -> torch.Tensor:
    """The training loss of one batch; on a frozen encoder (`cached` features) only the head runs."""
    train = data.splits["train"]
    device = model_device(model)
    images, present, target = to_device(train.batch(index), device)
    with autocast(device):
        if cached is not None:  # frozen encoder: its features of the training chips never change
            features = {sensor: [level[index.to(device)] for level in cached[sensor]] for sensor in images}
            out, aux = model.head(features, images=images, bands=train.bands, present=present), 0.0
        else:
            out, aux = model(images, train.bands, present=present, return_aux=True)
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
) -> tuple[float, dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Fine-tune on data.splits["train"], validate each epoch; returns (best val metric, its weights, history).

    `on_epoch(epoch, value)` sees every epoch's validation primary metric (Optuna reports and prunes there).
    """
    train, val = data.splits["train"], data.splits["val"]
    metric = PRIMARY_METRIC[data.spec.name]
    better = (lambda a, b: a > b) if METRIC_DIRECTIONS[metric] == "max" else (lambda a, b: a < b)
    for p in model.encoder.parameters():
        p.requires_grad_(not hp.freeze)
    optimizer = torch.optim.AdamW(param_groups(model, hp))
    steps = max(min_steps_per_epoch, math.ceil(len(train) / hp.batch_size))
    scheduler = cosine_schedule(optimizer, epochs * steps)
    batches = batch_indices(len(train), hp.batch_size, torch.Generator().manual_seed(seed))
    cached = encode_split(model, train, eval_batch_size) if hp.freeze else None
    best_value, best_state, history = math.nan, {}, []
    for epoch in range(epochs):
        model.train()
        if hp.freeze:
            model.encoder.eval()
        losses = []
        for _, index in zip(range(steps), batches, strict=False):
            loss = _loss(model, data, index, cached, aux_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        value = float(evaluate_split(model, data, val, eval_batch_size)[metric])
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), metric: value})
        log.info("%s epoch %d: train loss %.4f, val %s %.4f", data.spec.name, epoch, np.mean(losses), metric, value)
        if math.isnan(best_value) or better(value, best_value):
            best_value = value
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, value)
    return best_value, best_state, history
