"""The learning-rate schedule of pretraining and fine-tuning: linear warmup, then cosine decay to a floor.

Written here rather than taken from timm.scheduler.CosineLRScheduler: timm's warmup starts at an absolute
learning rate and its decay begins one step earlier, so it would move every step's learning rate.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup then cosine decay to `min_ratio` of the peak learning rate."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def cosine_schedule(
    optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0, min_ratio: float = 0.0, start: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Every group's lr follows `lr_factor` of its initial lr; step it after each optimizer step (from `start`)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, warmup, min_ratio), last_epoch=start - 1
    )
