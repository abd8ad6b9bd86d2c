"""Light per-sensor reconstruction decoders (SimMIM): a 1x1 convolution + pixel shuffle to chip resolution.

Band-aware like the patch embedding: the 1x1 kernels form a bank (n_bands, stride^2, D) indexed by
band name, so a decoder predicts exactly the bands a batch carries, in the batch's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msgfm.models.patch_embed import band_indices
from msgfm.sensors import get_sensor


class SensorDecoder(nn.Module):
    """Last-stage features (B, D, H/stride, W/stride) -> (B, C_bands, H, W) pixels in normalised units."""

    def __init__(self, sensor: str, in_dim: int, stride: int) -> None:
        super().__init__()
        self.sensor = sensor
        self.stride = stride
        n_bands = len(get_sensor(sensor).band_names)
        self.weight = nn.Parameter(torch.empty(n_bands, stride * stride, in_dim))
        self.bias = nn.Parameter(torch.zeros(n_bands, stride * stride))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, features: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        """Reconstruct the named bands of this sensor from encoder features."""
        idx = band_indices(self.sensor, bands, device=self.weight.device)
        weight = self.weight.index_select(0, idx).reshape(-1, self.weight.shape[-1], 1, 1)
        bias = self.bias.index_select(0, idx).reshape(-1)
        return F.pixel_shuffle(F.conv2d(features, weight, bias), self.stride)
