"""The learning-rate schedule of pretraining and fine-tuning: timm's CosineLRScheduler, stepped per optimizer update.

`cosine_schedule` builds `timm.scheduler.CosineLRScheduler` with `t_in_epochs=False` (one t per update): a
linear warmup over `warmup` updates from lr / warmup to lr (timm's `warmup_lr_init`, absolute, so the
warmup needs one lr for every param group), then, as a prefix (`warmup_prefix`), one cosine cycle over the
remaining updates to `min_ratio * lr` (timm's `lr_min`, also absolute: a floor above zero needs one lr for
every group; fine-tuning's layer-decay groups decay to 0). The wrapper gives it torch's scheduler interface
(`step()` after each optimizer step, `get_last_lr()`), so the loops read as with any torch scheduler.

Against the closed form used before (warmup (t + 1) / warmup, then the same cosine): the cosine part is
identical; timm's warmup reaches the peak at update `warmup` instead of `warmup - 1`, so a warmup update's
lr is lower by at most 1 / warmup of the peak (tests/test_pretrain.py checks both).
"""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler


class UpdateSchedule:
    """timm's CosineLRScheduler advanced once per optimizer update, with torch's `step`/`get_last_lr`."""

    def __init__(self, scheduler: CosineLRScheduler, start: int = 0) -> None:
        self.scheduler, self.updates = scheduler, start
        scheduler.step_update(start)

    def step(self) -> None:
        """After an optimizer step: set the lr of the next update."""
        self.updates += 1
        self.scheduler.step_update(self.updates)

    def get_last_lr(self) -> list[float]:
        """The lr every param group has now (for the next update)."""
        return [float(group["lr"]) for group in self.scheduler.optimizer.param_groups]


def cosine_schedule(
    optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0, min_ratio: float = 0.0, start: int = 0
) -> UpdateSchedule:
    """Linear warmup then cosine decay to `min_ratio` of each group's lr over `steps` updates, from update `start`."""
    peaks = {float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups}
    if (warmup or min_ratio) and len(peaks) > 1:
        raise ValueError(f"a warmup or an lr floor needs one lr for every param group, got {sorted(peaks)}")
    peak = peaks.pop() if len(peaks) == 1 else 0.0
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, steps - warmup),
        lr_min=min_ratio * peak,
        warmup_t=warmup,
        warmup_lr_init=peak / warmup if warmup else 0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    return UpdateSchedule(scheduler, start)
