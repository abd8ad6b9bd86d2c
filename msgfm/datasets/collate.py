"""Per-chip samples -> the batch of msgfm.models.msgfm.MSGFM (`MultiSensorBatch`), co-located chips linked.

A sample is ``{"sensor": "s2", "image": (C, H, W), "bands": (...), "pair": <key shared by co-located
chips, or None>}``; the batch groups images by sensor and gives each chip the row of its partner in the
partner sensor's images (-1 when it has none in the batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from msgfm.models.msgfm import MultiSensorBatch
from msgfm.sensors import PAIRS, partner_of


def collate_multisensor(samples: Sequence[Mapping[str, Any]]) -> MultiSensorBatch:
    """Group per-chip samples by sensor into the MSGFM batch dict and link co-located chips by their "pair" key."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for sample in samples:
        grouped.setdefault(sample["sensor"], []).append(sample)
    images, bands, pair_keys = {}, {}, {}
    for sensor, group in grouped.items():
        names = {tuple(s["bands"]) for s in group}
        if len(names) != 1:
            raise ValueError(f"sensor {sensor!r}: chips in one batch carry different band lists {sorted(names)}")
        bands[sensor] = names.pop()
        images[sensor] = torch.stack([torch.as_tensor(np.asarray(s["image"]), dtype=torch.float32) for s in group])
        pair_keys[sensor] = [s.get("pair") for s in group]
    partner = {}
    for sensor, keys in pair_keys.items():
        if not any(sensor in p for p in PAIRS):
            continue
        other = partner_of(sensor)
        lookup = {k: i for i, k in enumerate(pair_keys.get(other, [])) if k is not None}
        partner[sensor] = torch.tensor([lookup.get(k, -1) if k is not None else -1 for k in keys], dtype=torch.long)
    return MultiSensorBatch(images=images, bands=bands, partner=partner)
