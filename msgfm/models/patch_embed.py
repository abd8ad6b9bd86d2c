"""Band-aware patch embedding: one per sensor, projecting whichever of its bands are present into width D.

The projection is a bank of per-band kernels, shape (n_bands, D, p, p), indexed by band name. A batch
carrying a subset of the sensor's bands, in any order (S2 L2A without B10, S1 with VV only), gathers
the kernels of the bands it has and runs one convolution. This equals summing per-band 1-channel
projections, and also equals zero-filling the missing bands in normalised units (a missing band at
its mean contributes nothing), but costs only the bands present and needs no placeholder data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msgfm.sensors import get_sensor


def band_indices(sensor: str, bands: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
    """Indices of `bands` in the sensor's canonical band order; KeyError names the sensor and bad band."""
    names = get_sensor(sensor).band_names
    index = {n: i for i, n in enumerate(names)}
    missing = [b for b in bands if b not in index]
    if missing:
        raise KeyError(f"sensor {sensor!r} has no band(s) {missing}; its bands are {list(names)}")
    if len(set(bands)) != len(bands):
        raise ValueError(f"sensor {sensor!r}: duplicate bands in {list(bands)}")
    return torch.tensor([index[b] for b in bands], dtype=torch.long, device=device)


class BandAwarePatchEmbed(nn.Module):
    """Non-overlapping p x p patches of one sensor's image -> (B, H/p, W/p, D) tokens (NHWC, as timm's Swin)."""

    def __init__(self, sensor: str, embed_dim: int, patch_px: int) -> None:
        super().__init__()
        self.sensor = sensor
        self.band_names = get_sensor(sensor).band_names
        self.patch_px = patch_px
        self.weight = nn.Parameter(torch.empty(len(self.band_names), embed_dim, patch_px, patch_px))
        self.bias = nn.Parameter(torch.zeros(embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, image: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        """Embed a (B, C, H, W) image whose C channels are `bands` (names of this sensor's bands)."""
        if image.shape[1] != len(bands):
            raise ValueError(
                f"sensor {self.sensor!r}: image has {image.shape[1]} channels but {len(bands)} band names {list(bands)}"
            )
        idx = band_indices(self.sensor, bands, device=self.weight.device)
        weight = self.weight.index_select(0, idx).transpose(0, 1)  # (D, C_present, p, p)
        tokens = F.conv2d(image, weight, self.bias, stride=self.patch_px)
        return self.norm(tokens.permute(0, 2, 3, 1))
