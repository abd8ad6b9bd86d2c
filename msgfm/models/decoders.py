"""Light per-sensor reconstruction decoders (SimMIM): a 1x1 projection + pixel shuffle to chip resolution.

Band-aware like the patch embedding: the projection is a bank of stride^2 x D kernels per band, in the
sensor registry's band order, and a forward returns exactly the bands a batch names, in its order.
It projects all of the sensor's bands and then keeps the requested ones: the projection acts on the
few last-stage tokens, so its cost is reading the kernel bank, and gathering a sub-bank would copy it
(and scatter its gradient back) on every call. Kernels of bands a batch lacks get a zero gradient.
The 1x1 convolution is computed as one matrix product over NHWC tokens, the fast path on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msgfm.models.patch_embed import check_bands
from msgfm.sensors import get_sensor


class SensorDecoder(nn.Module):
    """Last-stage features (B, D, H/stride, W/stride) -> (B, C_bands, H, W) pixels in normalised units."""

    def __init__(self, sensor: str, in_dim: int, stride: int) -> None:
        super().__init__()
        self.sensor = sensor
        self.stride = stride
        self.band_names = get_sensor(sensor).band_names
        self.weight = nn.Parameter(torch.empty(len(self.band_names) * stride * stride, in_dim))
        self.bias = nn.Parameter(torch.zeros(len(self.band_names) * stride * stride))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, features: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        """Reconstruct the named bands of this sensor from encoder features."""
        check_bands(self.sensor, bands)
        b, _, h, w = features.shape
        r, n = self.stride, len(self.band_names)
        out = F.linear(features.permute(0, 2, 3, 1), self.weight, self.bias).reshape(b, h, w, n, r, r)
        if tuple(bands) != self.band_names:
            index = torch.tensor([self.band_names.index(x) for x in bands], device=out.device)
            out = out.index_select(3, index)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, len(bands), h * r, w * r)
