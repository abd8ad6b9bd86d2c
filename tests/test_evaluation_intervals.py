"""Per-chip statistics (msgfm.evaluation.chipstats) reproduce the torchmetrics values, weighted or not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msgfm.datasets.tasks import IGNORE_INDEX, get_task
from msgfm.evaluation.chipstats import chip_stats

N = 12


def _data(task: str, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Outputs and targets of N chips for the task, with ties, an absent class and ignored pixels."""
    if task == "classification":
        target = torch.tensor(rng.integers(0, 2, size=(N, 5)), dtype=torch.float32)
        target[:, 4] = 0  # a class with no positive in this split
        logits = torch.tensor(np.round(rng.normal(size=(N, 5)) + 2 * (target.numpy() - 0.5), 1), dtype=torch.float32)
        logits[:4] = logits[0]  # tied scores
        return logits, target, 5
    if task == "segmentation":
        target = torch.tensor(rng.integers(0, 4, size=(N, 8, 8)))
        target[0, :2] = IGNORE_INDEX
        logits = torch.tensor(rng.normal(size=(N, 5, 8, 8)), dtype=torch.float32)  # class 4 never true
        logits[:, 3] -= 10  # class 3 never predicted
        return logits, target, 5
    target = torch.tensor(rng.uniform(0.05, 0.6, size=(N, 4, 16, 16)), dtype=torch.float32)
    preds = (target + torch.tensor(rng.normal(0, 0.03, size=target.shape), dtype=torch.float32)).clamp(0, 1)
    return preds, target, 0


def _torchmetrics(task: str, outputs: torch.Tensor, target: torch.Tensor, k: int) -> dict[str, float]:
    metrics = get_task(task).metrics(k)
    metrics.update(outputs, target if get_task(task).kind == "image" else target.long())
    return {m: v for m, v in metrics.compute().items() if not isinstance(v, list)}


@pytest.mark.parametrize("task", ["classification", "segmentation", "cloud_removal", "pansharpening"])
def test_ones_reproduce_and_counts_duplicate_chips(task: str) -> None:
    rng = np.random.default_rng(0)
    outputs, target, k = _data(task, rng)
    stats = chip_stats(get_task(task), k, outputs, target)
    assert len(stats) == N
    reference = _torchmetrics(task, outputs, target, k)
    point = stats.statistic(np.ones((1, N)))
    assert set(point) == set(reference)
    for name, value in reference.items():
        assert point[name][0] == pytest.approx(value, abs=2e-5), name
    # a weight of 2 is the chip taken twice, 0 the chip left out
    counts = rng.integers(0, 3, size=N)
    counts[0] = 2
    index = np.repeat(np.arange(N), counts)
    duplicated = _torchmetrics(task, outputs[index], target[index], k)
    weighted = stats.statistic(counts[None, :].astype(float))
    for name, value in duplicated.items():
        assert weighted[name][0] == pytest.approx(value, abs=2e-5), name
