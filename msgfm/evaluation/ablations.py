"""Modality ablations of a test split: a sensor dropped, corrupted by noise, misregistered or under a cloud.

`ablation_conditions` gives `msgfm evaluate` the test split under every condition of the task (or why a
condition does not apply); `"clean"` is the unmodified split. Each condition copies the split first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from msgfm.datasets.tasks import TaskData, TaskSplit
from msgfm.sensors import get_sensor

if TYPE_CHECKING:
    from msgfm.config import Params

CLOUD_VALUE = {"s2": 5000.0, "rgb": 235.0}
"""Physical value a synthetic cloud sets on an optical sensor's bands (S2: reflectance 0.5; RGB: near white)."""


def drop_sensor(split: TaskSplit, sensor: str) -> TaskSplit:
    """The split with `sensor` absent from every sample (missing modality)."""
    out = split.subset(np.arange(len(split)))
    out.images[sensor] = torch.zeros_like(out.images[sensor])
    out.present[sensor] = torch.zeros_like(out.present[sensor])
    return out


def add_noise(split: TaskSplit, sensor: str, std: float, seed: int) -> TaskSplit:
    """The split with Gaussian noise of `std` (normalised units) added to `sensor`'s chips."""
    out = split.subset(np.arange(len(split)))
    generator = torch.Generator().manual_seed(seed)
    out.images[sensor] = out.images[sensor] + std * torch.randn(out.images[sensor].shape, generator=generator)
    return out


def misregister(split: TaskSplit, sensor: str, shift_px: int) -> TaskSplit:
    """The split with `sensor`'s chips shifted by `shift_px` pixels down and right (wrapping at the edges)."""
    out = split.subset(np.arange(len(split)))
    out.images[sensor] = torch.roll(out.images[sensor], shifts=(shift_px, shift_px), dims=(-2, -1))
    return out


def add_cloud(split: TaskSplit, sensor: str, cover: float, seed: int) -> TaskSplit:
    """The split with a square cloud covering `cover` of each `sensor` chip at a seeded random place."""
    out = split.subset(np.arange(len(split)))
    images = out.images[sensor].clone()
    size = images.shape[-1]
    side = max(1, int(round(math.sqrt(cover) * size)))
    bands = split.bands[sensor]
    value = np.full((len(bands), 1, 1), CLOUD_VALUE[sensor], dtype=np.float32)
    cloud = torch.from_numpy(get_sensor(sensor).normalise(value, bands))
    rng = np.random.default_rng(seed)
    for i in range(images.shape[0]):
        r, c = rng.integers(0, size - side + 1, size=2)
        images[i, :, r : r + side, c : c + side] = cloud
    out.images[sensor] = images
    return out


def ablation_conditions(params: Params, data: TaskData, split: TaskSplit) -> dict[str, TaskSplit | str]:
    """Test split variants per condition name ("clean", "drop_s1", "noise_s2", ...) or why one does not apply."""
    cfg = params.evaluate
    conditions: dict[str, TaskSplit | str] = {"clean": split}
    for sensor in data.spec.inputs:
        if len(data.spec.inputs) < 2:
            conditions[f"drop_{sensor}"] = "the task has one input sensor"
        elif sensor == data.spec.residual:
            conditions[f"drop_{sensor}"] = f"the output is a correction of the {sensor} input"
        else:
            conditions[f"drop_{sensor}"] = drop_sensor(split, sensor)
        conditions[f"noise_{sensor}"] = add_noise(split, sensor, cfg.noise_std, params.seed)
        conditions[f"shift_{sensor}"] = misregister(split, sensor, cfg.shift_px)
        if sensor in CLOUD_VALUE:
            conditions[f"cloud_{sensor}"] = add_cloud(split, sensor, cfg.cloud_cover, params.seed)
    return conditions
