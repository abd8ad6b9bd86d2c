"""Smooth interpolations of a chip's visible pixels, the skip a decoder's reconstruction is added to.

A masked cell's tokens carry no pixel of it, and 150 CPU steps do not teach the encoder to interpolate its
visible neighbours as well as an inverse-distance fill does (docs/model.md). `visible_fill` hands the decoder
that interpolation directly: a normalised convolution (Gaussian-weighted mean of the visible pixels, divided by
the Gaussian-weighted visible share) at a few scales. It uses only pixels the model is given (a chip's own
visible pixels; for a joint cross term, the partner's visible pixels that the fused input shows).
Computed on the patch grid (4 px means) and upsampled bilinearly: the scales are several cells wide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _gaussian_matrix(n: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """(n, n) 1-D Gaussian blur as a matrix (zero outside the chip): a separable blur is G @ x @ G.T, one small
    matrix product instead of a depthwise convolution with a wide kernel (slow on CPU)."""
    t = torch.arange(n, dtype=like.dtype, device=like.device)
    g = torch.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)
    return g / g.sum(dim=1, keepdim=True).max()


def visible_fill(image: torch.Tensor, hidden: torch.Tensor, scales_px: Sequence[int], cell_px: int) -> torch.Tensor:
    """(S, B, C, H, W): for each scale, the Gaussian-weighted mean of the visible pixels (hidden (B, H, W), True =
    not visible) around every pixel; where no visible pixel is near, the chip's visible mean."""
    b, c, h, w = image.shape
    visible = (~hidden).to(image.dtype).unsqueeze(1)
    pooled_x = F.avg_pool2d(image * visible, cell_px)
    pooled_v = F.avg_pool2d(visible, cell_px)
    chip_mean = (image * visible).sum((2, 3), keepdim=True) / visible.sum((2, 3), keepdim=True).clamp(min=1.0)
    fills = []
    for scale in scales_px:
        rows = _gaussian_matrix(pooled_x.shape[-2], scale / cell_px, image)
        cols = _gaussian_matrix(pooled_x.shape[-1], scale / cell_px, image)
        num, den = rows @ pooled_x @ cols.T, rows @ pooled_v @ cols.T
        eps = 1e-3
        fill = (num + eps * chip_mean) / (den + eps)
        fills.append(F.interpolate(fill, size=(h, w), mode="bilinear", align_corners=False))
    return torch.stack(fills)
