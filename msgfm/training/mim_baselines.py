"""Predictors a pretrained model must beat on masked pixels, from what is visible in the same chip.

Each function returns a full (B, C, H, W) prediction; only its masked pixels are scored (masked_l1 with
the same mask), so the model and every baseline are compared on exactly the same pixels.

- `global_mean_fill`: one per-band mean for every chip (the training set's), blind to the chip.
- `chip_mean_fill`: each chip's per-band mean over its visible (unmasked) pixels.
- `idw_fill`: each masked pixel as the inverse-distance-weighted mean of the chip's visible pixels,
  an interpolation that keeps the large-scale structure around a hole.

For a cross-sensor term a->b the "visible pixels" are sensor b's pixels where a's chip was left
unmasked: information the model never sees (it sees only a's pixels), so the baseline is strict.
"""

from __future__ import annotations

import torch

from msgfm.models.msgfm import visible_stats


def global_mean_fill(means: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(C,) per-band means broadcast to the shape of `like` (B, C, H, W)."""
    return means.to(like.dtype).view(1, -1, 1, 1).expand_as(like)


def chip_mean_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every pixel of a chip set to its per-band mean over the visible pixels (mask (B, H, W), True = masked)."""
    mean, _ = visible_stats(image, mask)
    return mean.expand_as(image)


def idw_fill(image: torch.Tensor, mask: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """Masked pixels filled by inverse-distance weighting (1 / d**power) of all visible pixels of their chip.

    Visible pixels keep their values. A chip with no visible pixel is left at zero (the normalised mean).
    """
    b, c, h, w = image.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([yy.flatten(), xx.flatten()], dim=1).to(torch.float64)
    out = image.clone()
    flat = out.view(b, c, h * w)
    for i in range(b):
        m = mask[i].flatten().cpu()
        if not m.any():
            continue
        if m.all():
            flat[i] = 0.0
            continue
        d = torch.cdist(coords[m], coords[~m])  # (masked, visible), at least 1 px apart
        weight = d.pow(-power).to(device=image.device, dtype=image.dtype)
        dev_m = m.to(image.device)
        flat[i][:, dev_m] = flat[i][:, ~dev_m] @ weight.T / weight.sum(dim=1)
    return out
