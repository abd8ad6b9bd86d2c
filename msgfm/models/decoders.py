"""Per-sensor reconstruction decoders: the encoder's stage maps -> the sensor's pixels at chip resolution.

Two designs, chosen by `MSGFMConfig.decoder` (params.yaml `model.decoder`; measured in docs/model.md):

- ``unet`` (default): a light U-Net/FPN path over all stage maps (strides 4, 8, 16, 32). Each map is
  layer-normed and projected to `embed_dim` channels; the top-down path upsamples (bilinear), adds the
  next finer map and refines with a residual 3x3 convolution, down to stride `patch_px` (4 px, finer
  than the 8 px mask cell); a band-aware projection + pixel shuffle gives the pixels.
- ``linear``: SimMIM's 1x1 projection + pixel shuffle of the last stage only. On a 64 px chip that is a
  2x2 token grid, each token painting a 32x32 block: it can learn little beyond per-quadrant means.

Both are band-aware like the patch embedding: `PixelShuffleProjection` holds stride^2 x D kernels per
band in the sensor registry's band order, and a forward returns exactly the bands a batch names, in its
order. It projects all the sensor's bands and then keeps the requested ones (gathering a sub-bank would
copy it, and scatter its gradient back, on every call); kernels of bands a batch lacks get zero gradient.
1x1 convolutions are matrix products over NHWC tokens, the fast path on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msgfm.architectures import MSGFMConfig
from msgfm.models.patch_embed import check_bands
from msgfm.sensors import get_sensor


class PixelShuffleProjection(nn.Module):
    """One feature map (B, D, h, w) -> (B, C_bands, h*stride, w*stride): a band-aware 1x1 projection + pixel shuffle."""

    def __init__(self, sensor: str, in_dim: int, stride: int) -> None:
        super().__init__()
        self.sensor = sensor
        self.stride = stride
        self.band_names = get_sensor(sensor).band_names
        self.weight = nn.Parameter(torch.empty(len(self.band_names) * stride * stride, in_dim))
        self.bias = nn.Parameter(torch.zeros(len(self.band_names) * stride * stride))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def project(self, features: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        """Pixels of the named bands of this sensor from one feature map."""
        check_bands(self.sensor, bands)
        b, _, h, w = features.shape
        r, n = self.stride, len(self.band_names)
        out = F.linear(features.permute(0, 2, 3, 1), self.weight, self.bias).reshape(b, h, w, n, r, r)
        if tuple(bands) != self.band_names:
            index = torch.tensor([self.band_names.index(x) for x in bands], device=out.device)
            out = out.index_select(3, index)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, len(bands), h * r, w * r)


class LinearDecoder(PixelShuffleProjection):
    """SimMIM: the last stage map alone, projected to stride x stride pixels per token."""

    def __init__(self, sensor: str, config: MSGFMConfig) -> None:
        super().__init__(sensor, config.stage_dims[-1], config.stride)

    def forward(self, features: Sequence[torch.Tensor], bands: Sequence[str]) -> torch.Tensor:
        """Reconstruct the named bands from the encoder's stage maps (only the last is used)."""
        return self.project(features[-1], bands)


class _Lateral(nn.Module):
    """LayerNorm over channels, then a 1x1 projection (on NHWC tokens) of one stage map to the decoder width."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, C_out, h, w)."""
        return self.proj(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class UNetDecoder(nn.Module):
    """Top-down U-Net/FPN path over every stage map, to stride patch_px, then a band-aware pixel-shuffle projection."""

    def __init__(self, sensor: str, config: MSGFMConfig) -> None:
        super().__init__()
        width = config.embed_dim
        self.sensor = sensor
        self.band_names = get_sensor(sensor).band_names
        self.lateral = nn.ModuleList(_Lateral(d, width) for d in config.stage_dims)
        self.refine = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU()) for _ in config.stage_dims[:-1]
        )
        self.head = PixelShuffleProjection(sensor, width, config.patch_px)
        self.coarse = PixelShuffleProjection(sensor, width, 1)

    def forward(self, features: Sequence[torch.Tensor], bands: Sequence[str]) -> torch.Tensor:
        """Reconstruct the named bands from the encoder's stage maps, finest first."""
        x = self.lateral[-1](features[-1])
        for i in range(len(features) - 2, -1, -1):
            skip = self.lateral[i](features[i])
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
            x = x + self.refine[i](x)
        coarse = F.interpolate(self.coarse.project(x, bands), scale_factor=self.head.stride, mode="bilinear")
        return coarse + self.head.project(x, bands)


DECODERS: dict[str, type[nn.Module]] = {"unet": UNetDecoder, "linear": LinearDecoder}
"""The decoder designs by `MSGFMConfig.decoder` name (msgfm.architectures.DECODER_DESIGNS lists the same names)."""


def build_decoder(sensor: str, config: MSGFMConfig) -> nn.Module:
    """The reconstruction decoder of `sensor` in the design `config.decoder`."""
    return DECODERS[config.decoder](sensor, config)
