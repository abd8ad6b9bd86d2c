"""Grow a pretrained encoder by sensors added to the registry after pretraining (msgfm.sensors.ADDED_SENSORS).

`add_sensors(encoder, ["wv_ms", "wv_pan"])` returns a new encoder whose config lists the added sensors after
the pretrained ones. Everything pretrained is copied unchanged, so the pretrained sensors' features are the
same as before. Each added sensor gets a patch embedding borrowed from the wavelength-nearest pretrained
bands (msgfm.models.patch_embed.borrow_nearest), and the sensor embedding and MoE routing bias of the sensor
that lends it most bands, so its tokens enter the shared Swin blocks looking like that sensor's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch

from msgfm.models.encoder import MSGFMEncoder
from msgfm.models.patch_embed import borrow_nearest
from msgfm.sensors import ADDED_SENSORS, SENSORS

log = logging.getLogger(__name__)

_PER_SENSOR_ROWS = ("sensor_embed", "sensor_bias.weight")
"""Parameters with one row per sensor (in config order): the sensor embedding and each MoE router's bias."""


def addable(sensors: Sequence[str], encoder: MSGFMEncoder) -> list[str]:
    """The sensors of `sensors` an encoder lacks and may grow: added sensors, never a pretraining sensor (an
    encoder pretrained without S1 stays without it, which is what the single-sensor baseline measures)."""
    return [s for s in dict.fromkeys(sensors) if s in ADDED_SENSORS and s not in encoder.sensors]


@torch.no_grad()
def add_sensors(encoder: MSGFMEncoder, sensors: Sequence[str]) -> MSGFMEncoder:
    """A copy of `encoder` that also embeds `sensors` (registered added sensors); unchanged if it has them all."""
    new = [s for s in dict.fromkeys(sensors) if s not in encoder.sensors]
    if not new:
        return encoder
    pretraining = [s for s in new if s in SENSORS]
    if pretraining:
        raise ValueError(f"sensors {pretraining} are pretraining sensors: an encoder learns them by pretraining")
    old_index = {s: i for i, s in enumerate(encoder.sensors)}
    grown = MSGFMEncoder(dataclasses.replace(encoder.config, sensors=(*encoder.sensors, *new)))
    donors = {s: encoder.patch_embed[s] for s in encoder.sensors}
    state = grown.state_dict()
    for key, value in encoder.state_dict().items():
        if key.endswith(_PER_SENSOR_ROWS):
            state[key][: value.shape[0]] = value
        else:
            state[key] = value.clone()
    lenders = {}
    for sensor in new:
        chosen = borrow_nearest(grown.patch_embed[sensor], donors)
        counts = [d for d, _ in chosen.values()]
        lenders[sensor] = max(donors, key=counts.count)
        log.info("sensor %s: bands from %s; sensor embedding from %s", sensor, chosen, lenders[sensor])
        for name, tensor in grown.patch_embed[sensor].state_dict().items():
            state[f"patch_embed.{sensor}.{name}"] = tensor.clone()
    for key, rows in state.items():
        if key.endswith(_PER_SENSOR_ROWS):
            for sensor in new:
                rows[grown.sensor_index[sensor]] = rows[old_index[lenders[sensor]]]
    grown.load_state_dict(state)
    device = next(encoder.parameters()).device
    return grown.to(device).train(encoder.training)
