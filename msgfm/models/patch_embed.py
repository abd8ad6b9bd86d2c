"""Band-aware patch embedding: one per sensor, projecting whichever of its bands are present into width D.

Each band owns its p x p -> D kernel (a parameter named after the band). A batch carrying a subset of
the sensor's bands, in any order (S2 L2A without B10, S1 with VV only), stacks the kernels of the bands
it has into one projection. This equals summing per-band 1-channel projections, and equals zero-filling
the missing bands in normalised units (a band at its mean contributes nothing), but it costs only the
bands present, needs no placeholder data, and leaves absent bands' kernels without a gradient.
Patches are projected with a reshape and one matrix product (no convolution), which is the fastest
path on CPU and gives NHWC tokens directly, as timm's Swin blocks take them.

A sensor added after pretraining (msgfm.sensors.ADDED_SENSORS) starts from what the pretrained embeddings
know: `borrow_nearest` copies into each of its bands the kernel of the pretrained band nearest in centre
wavelength (`nearest_bands`), and the bias and LayerNorm of the sensor lending most bands. The LayerNorm
after the projection makes the sum over a different number of bands (1 PAN band against RGB's 3) harmless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def nearest_bands(sensor: str, donors: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Each band of `sensor` -> (donor sensor, donor band) nearest in centre wavelength; ties go to the first."""
    pool = [(d, b) for d in donors for b in get_sensor(d).bands if b.wavelength_nm is not None]
    if not pool:
        raise ValueError(f"sensor {sensor!r}: none of the donor sensors {list(donors)} has band wavelengths")
    found = {}
    for band in get_sensor(sensor).bands:
        if band.wavelength_nm is None:
            raise ValueError(f"sensor {sensor!r}: band {band.name!r} has no wavelength_nm to find a donor band by")
        donor, other = min(pool, key=lambda p: abs(p[1].wavelength_nm - band.wavelength_nm))
        found[band.name] = (donor, other.name)
    return found


@torch.no_grad()
def borrow_nearest(embed: BandAwarePatchEmbed, donors: Mapping[str, BandAwarePatchEmbed]) -> dict[str, tuple[str, str]]:
    """Initialise `embed` from pretrained embeddings: band kernels from `nearest_bands`, bias and LayerNorm from
    the donor lending most bands (the first on a tie); returns the band -> (sensor, band) map it used."""
    chosen = nearest_bands(embed.sensor, list(donors))
    for band, (donor, other) in chosen.items():
        embed.weight[band].copy_(donors[donor].weight[other])
    lenders = [d for d, _ in chosen.values()]
    lender = donors[max(donors, key=lenders.count)]
    embed.bias.copy_(lender.bias)
    embed.norm.load_state_dict(lender.norm.state_dict())
    return chosen
