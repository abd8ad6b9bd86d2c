"""Pan-sharpening inputs by Wald's protocol and Schowengerdt's HPF fusion, on reflectance tensors.

One home for the fusion the chip-store task (msgfm.datasets.task_chips), the streamed benchmarks
(msgfm.datasets.streaming) and the HPF baseline of scoring all use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAN_RATIO = 4
"""Resolution ratio of Wald's protocol here: MS is degraded by 4 (10 m -> 40 m)."""


def wald_ms_upsampled(reference: torch.Tensor) -> torch.Tensor:
    """Wald's protocol on reflectance (B, C, H, W): degraded by PAN_RATIO (block mean), upsampled bicubically."""
    ms_low = F.avg_pool2d(reference, PAN_RATIO)
    return F.interpolate(ms_low, size=reference.shape[-2:], mode="bicubic", align_corners=False)


def hpf_fuse(ms_low: torch.Tensor, pan: torch.Tensor) -> torch.Tensor:
    """Schowengerdt's HPF fusion: MS (B, C, H/r, W/r) upsampled bicubically to the PAN's (B, 1, H, W) size, plus the
    PAN's detail above the MS resolution (PAN minus its r x r block mean, upsampled the same way); r = PAN_RATIO."""
    size = pan.shape[-2:]
    ms_up = F.interpolate(ms_low, size=size, mode="bicubic", align_corners=False)
    pan_low = F.interpolate(F.avg_pool2d(pan, PAN_RATIO), size=size, mode="bicubic", align_corners=False)
    return ms_up + (pan - pan_low)


def wald_pansharpening_input(reference: torch.Tensor) -> torch.Tensor:
    """Wald's protocol on reflectance (B, 4, H, W): MS degraded by PAN_RATIO, upsampled, plus PAN high-pass detail."""
    return hpf_fuse(F.avg_pool2d(reference, PAN_RATIO), reference.mean(dim=1, keepdim=True))
