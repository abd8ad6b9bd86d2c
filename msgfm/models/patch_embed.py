"""Band-aware patch embedding: one per sensor, projecting whichever of its bands are present into width D.

Each band owns its p x p -> D kernel (a parameter named after the band). A batch carrying a subset of
the sensor's bands, in any order (S2 L2A without B10, S1 with VV only), stacks the kernels of the bands
it has into one projection. This equals summing per-band 1-channel projections, and equals zero-filling
the missing bands in normalised units (a band at its mean contributes nothing), but it costs only the
bands present, needs no placeholder data, and leaves absent bands' kernels without a gradient.
Patches are projected with a reshape and one matrix product (no convolution), which is the fastest
path on CPU and gives NHWC tokens directly, as timm's Swin blocks take them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msgfm.sensors import get_sensor


def check_bands(sensor: str, bands: Sequence[str]) -> None:
    """Raise a KeyError naming the sensor and the unknown bands, or a ValueError on duplicates."""
    names = get_sensor(sensor).band_names
    missing = [b for b in bands if b not in names]
    if missing:
        raise KeyError(f"sensor {sensor!r} has no band(s) {missing}; its bands are {list(names)}")
    if len(set(bands)) != len(bands):
        raise ValueError(f"sensor {sensor!r}: duplicate bands in {list(bands)}")


class BandAwarePatchEmbed(nn.Module):
    """Non-overlapping p x p patches of one sensor's image -> (B, H/p, W/p, D) tokens (NHWC, as timm's Swin)."""

    def __init__(self, sensor: str, embed_dim: int, patch_px: int) -> None:
        super().__init__()
        self.sensor = sensor
        self.band_names = get_sensor(sensor).band_names
        self.patch_px = patch_px
        self.weight = nn.ParameterDict(
            {b: nn.Parameter(torch.empty(embed_dim, patch_px * patch_px)) for b in self.band_names}
        )
        self.bias = nn.Parameter(torch.zeros(embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        for w in self.weight.values():
            nn.init.trunc_normal_(w, std=0.02)

    def forward(self, image: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        """Embed a (B, C, H, W) image whose C channels are `bands` (names of this sensor's bands)."""
        if image.shape[1] != len(bands):
            raise ValueError(
                f"sensor {self.sensor!r}: image has {image.shape[1]} channels but {len(bands)} band names {list(bands)}"
            )
        check_bands(self.sensor, bands)
        b, c, h, w = image.shape
        p = self.patch_px
        patches = image.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h // p, w // p, -1)
        weight = torch.cat([self.weight[name] for name in bands], dim=1)  # (D, C * p * p), band-major
        return self.norm(F.linear(patches, weight, self.bias))
