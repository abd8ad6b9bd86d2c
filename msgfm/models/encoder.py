"""Shared hierarchical Swin encoder of msGFM, built from timm's Swin blocks (its config: msgfm.architectures).

Tokens of every sensor in a batch go through one encoder pass: each sensor's chips are embedded by
its band-aware patch embedding, masked patch tokens are replaced by a learnable mask token (SimMIM),
a learned sensor embedding is added, and the per-sensor token grids are concatenated along the batch
axis (all chips of a batch share one size in pixels). Blocks named by `moe_stages`/`moe_every` use a
Mixture-of-Experts MLP routed by token and sensor (moe.py); the rest are timm's dense blocks.
Windows are sized to the model's chip: each stage uses min(window_size, its token grid at chip_px), as
timm does. Inputs of any height and width that are multiples of patch_px run too: timm pads each stage
to whole windows and crops back, the shifted-window mask is built for the input's size (dynamic_mask),
and PatchMerging pads odd grids, so stage i's map is ceil(H / (patch_px * 2^i)) tokens high.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock
from torch import nn

from msgfm.architectures import MSGFMConfig
from msgfm.models.moe import MoEMlp
from msgfm.models.patch_embed import BandAwarePatchEmbed


class SwinMoEBlock(SwinTransformerBlock):
    """timm's Swin block with its MLP replaced by a sensor-aware MoE; forward(x, sensor_ids) -> (x, aux)."""

    def __init__(self, *, experts: int, n_sensors: int, top_k: int, capacity_factor: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlp = MoEMlp(
            self.dim,
            int(self.dim * self.mlp_ratio),
            experts=experts,
            n_sensors=n_sensors,
            top_k=top_k,
            capacity_factor=capacity_factor,
        )

    def forward(self, x: torch.Tensor, sensor_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) tokens and (B,) sensor ids -> new tokens and the block's balancing loss."""
        b, h, w, c = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(b, h * w, c)
        token_sensor = sensor_ids[:, None].expand(b, h * w)
        y, aux = self.mlp(self.norm2(x), token_sensor)
        x = x + self.drop_path2(y)
        return x.reshape(b, h, w, c), aux


@dataclass
class EncoderOutput:
    """Per-sensor multi-scale features (B_s, C_i, H_i, W_i), one per stage, and the mean MoE balancing loss."""

    features: dict[str, list[torch.Tensor]]
    aux_loss: torch.Tensor


class MSGFMEncoder(nn.Module):
    """Band-aware per-sensor patch embeddings + one shared Swin(-MoE) encoder over all sensors' tokens."""

    def __init__(self, config: MSGFMConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.sensors = cfg.sensors
        self.sensor_index = {s: i for i, s in enumerate(cfg.sensors)}
        self.patch_embed = nn.ModuleDict({s: BandAwarePatchEmbed(s, cfg.embed_dim, cfg.patch_px) for s in cfg.sensors})
        self.mask_token = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.sensor_embed = nn.Parameter(torch.zeros(len(cfg.sensors), cfg.embed_dim))
        grid = cfg.chip_px // cfg.patch_px
        dims = cfg.stage_dims
        n_blocks = sum(cfg.depths)
        rates = [cfg.drop_path_rate * k / max(n_blocks - 1, 1) for k in range(n_blocks)]
        self.downsample = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            res = (grid // 2**i, grid // 2**i)
            self.downsample.append(PatchMerging(dims[i - 1], dims[i]) if i else nn.Identity())
            blocks = nn.ModuleList()
            for j in range(depth):
                kwargs = dict(
                    dim=dims[i],
                    input_resolution=res,
                    num_heads=cfg.num_heads[i],
                    window_size=cfg.window_size,
                    shift_size=0 if j % 2 == 0 else cfg.window_size // 2,
                    mlp_ratio=cfg.mlp_ratio,
                    drop_path=rates[sum(cfg.depths[:i]) + j],
                    dynamic_mask=True,  # the shifted-window mask follows the input's size (any H, W)
                )
                if cfg.is_moe_block(i, j):
                    block = SwinMoEBlock(
                        experts=cfg.experts,
                        n_sensors=len(cfg.sensors),
                        top_k=cfg.moe_top_k,
                        capacity_factor=cfg.moe_capacity_factor,
                        **kwargs,
                    )
                else:
                    block = SwinTransformerBlock(**kwargs)
                blocks.append(block)
            self.stages.append(blocks)
        self.norm = nn.LayerNorm(dims[-1])
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.sensor_embed, std=0.02)
        self.apply(_init_linear_and_norm)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False, prefix: str = "") -> dict[str, Any]:
        """timm-style parameter groups (layer-wise lr decay): the embeddings, then one group per stage (its
        downsampling and blocks; the final norm joins the last stage). `prefix` names this encoder in a parent."""
        p = re.escape(prefix)
        return {
            "stem": rf"^{p}(?:patch_embed|mask_token|sensor_embed)",
            "blocks": [
                (rf"^{p}(?:stages|downsample)\.(\d+)", None),
                (rf"^{p}norm", (len(self.stages) - 1,)),
            ],
        }

    @property
    def dims(self) -> tuple[int, ...]:
        """Channel widths of the stage outputs."""
        return self.config.stage_dims

    def _check_size(self, sensor: str, image: torch.Tensor, first: torch.Tensor | None) -> None:
        """Chips must be whole patches and every sensor of a batch must share one size."""
        size, p = tuple(image.shape[-2:]), self.config.patch_px
        if size[0] % p or size[1] % p or min(size) == 0:
            raise ValueError(
                f"sensor {sensor!r}: height and width must be multiples of the patch size {p} px, got {size}"
            )
        if first is not None and tuple(first.shape[-2:]) != size:
            raise ValueError(
                f"sensor {sensor!r}: {size} px, but another sensor in the same batch is "
                f"{tuple(first.shape[-2:])} px; one batch, one size"
            )

    def embed(
        self,
        images: Mapping[str, torch.Tensor],
        bands: Mapping[str, Sequence[str]],
        token_masks: Mapping | None,
        fused: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int]]]:
        """Embed, mask and sensor-tag each sensor's chips, then the fused pairs; concatenate along the batch axis.

        `fused` maps "a+b" to rows of images[a] and images[b] (co-located chips): each such pair is also one
        input whose token is the mean of the two sensors' visible tokens, the mask token where neither is visible
        (MultiMAE-style; routed as sensor a)."""
        tokens, ids, sizes, visible_tokens, visible = [], [], [], {}, {}
        first = None
        for sensor, image in images.items():
            if sensor not in self.sensor_index:
                raise KeyError(f"sensor {sensor!r} is not in this model; it knows {list(self.sensors)}")
            if sensor not in bands:
                raise KeyError(f"batch has images for {sensor!r} but no band list for it")
            self._check_size(sensor, image, first)
            first = image if first is None else first
            x = self.patch_embed[sensor](image, bands[sensor])
            tag = self.sensor_embed[self.sensor_index[sensor]]
            if token_masks is not None and sensor in token_masks:
                m = token_masks[sensor].to(x.dtype)
                visible_tokens[sensor], visible[sensor] = x + tag, 1.0 - m
                x = x * (1.0 - m.unsqueeze(-1)) + self.mask_token * m.unsqueeze(-1)
            x = x + tag
            tokens.append(x)
            ids.append(torch.full((x.shape[0],), self.sensor_index[sensor], dtype=torch.long, device=x.device))
            sizes.append((sensor, x.shape[0]))
        if not tokens:
            raise ValueError("batch has no images")
        for key, (rows_a, rows_b) in (fused or {}).items():
            a, b = key.split("+")
            va, vb = visible[a].index_select(0, rows_a).unsqueeze(-1), visible[b].index_select(0, rows_b).unsqueeze(-1)
            both = va * visible_tokens[a].index_select(0, rows_a) + vb * visible_tokens[b].index_select(0, rows_b)
            seen = va + vb
            hidden = (self.mask_token + self.sensor_embed[self.sensor_index[a]]) * (seen == 0).to(both.dtype)
            tokens.append(both / seen.clamp(min=1.0) + hidden)
            ids.append(torch.full((both.shape[0],), self.sensor_index[a], dtype=torch.long, device=both.device))
            sizes.append((key, both.shape[0]))
        return torch.cat(tokens), torch.cat(ids), sizes

    def forward(
        self,
        images: Mapping[str, torch.Tensor],
        bands: Mapping[str, Sequence[str]],
        token_masks: Mapping[str, torch.Tensor] | None = None,
        fused: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> EncoderOutput:
        """Encode every sensor's (B_s, C_s, H, W) normalised chips; token_masks: (B_s, H/p, W/p) bool, True=masked.
        `fused` (see embed) adds one fused input per listed pair, its features under the key "a+b"."""
        x, sensor_ids, sizes = self.embed(images, bands, token_masks, fused)
        per_stage, aux = [], []
        for i, (down, blocks) in enumerate(zip(self.downsample, self.stages, strict=True)):
            x = down(x)
            for block in blocks:
                if isinstance(block, SwinMoEBlock):
                    x, block_aux = block(x, sensor_ids)
                    aux.append(block_aux)
                else:
                    x = block(x)
            out = self.norm(x) if i == len(self.stages) - 1 else x
            per_stage.append(out.permute(0, 3, 1, 2))
        names = [s for s, _ in sizes]
        counts = [n for _, n in sizes]
        features = {s: [] for s in names}
        for stage_out in per_stage:
            for s, part in zip(names, stage_out.split(counts), strict=True):
                features[s].append(part)
        aux_loss = torch.stack(aux).mean() if aux else x.new_zeros(())
        return EncoderOutput(features=features, aux_loss=aux_loss)


def _init_linear_and_norm(module: nn.Module) -> None:
    """SimMIM/timm Swin initialisation: truncated-normal Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module, active: bool = False) -> int:
    """Number of parameters; active=True counts only top-k experts per MoE layer (parameters used per token)."""
    total = sum(p.numel() for p in module.parameters())
    if not active:
        return total
    for moe in (m for m in module.modules() if isinstance(m, MoEMlp)):
        per_expert = sum(p.numel() for p in moe.experts[0].parameters())
        total -= per_expert * (moe.experts_n - moe.top_k)
    return total
