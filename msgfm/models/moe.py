"""Mixture-of-Experts MLP for the deeper Swin blocks, routed by token content and sensor.

Router: logits = W x + b_sensor, i.e. a linear router over the token concatenated with a one-hot
sensor code, so each sensor can learn its own expert preferences while tokens still route by content.
Top-k routing (GShard; top-1 as in Switch Transformer) with an expert capacity during training:
assignments are ranked by choice (first choices before second) and then by gate value, Batch
Prioritized Routing as in V-MoE, so overflow drops the least confident tokens rather than whichever
sensor happens to come last in the concatenated batch. Dropped tokens get a zero MLP output and pass
through the block's residual. In eval mode there is no capacity limit, so a sample's output does not
depend on what else is in the batch.

Load-balancing auxiliary loss (Switch Transformer, eq. 4): E * sum_i f_i * P_i, where f_i is the share
of tokens whose first choice is expert i and P_i the mean router probability of expert i. It is 1 when
routing is uniform and E when every token goes to one expert.

Dispatch is vectorised: assignments are sorted by expert, each expert runs once on its contiguous
slice (a loop over experts, never over tokens), and results are scattered back with index_add.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Mlp
from torch import nn


class MoEMlp(nn.Module):
    """Drop-in replacement for a transformer MLP: (N, D) tokens + (N,) sensor ids -> ((N, D), aux loss)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        experts: int,
        n_sensors: int,
        top_k: int = 1,
        capacity_factor: float = 1.25,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        if experts < 2:
            raise ValueError(f"MoEMlp needs at least 2 experts, got {experts}")
        if not 1 <= top_k <= experts:
            raise ValueError(f"top_k must be in 1..{experts}, got {top_k}")
        self.experts_n = experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.router = nn.Linear(dim, experts)
        self.sensor_bias = nn.Embedding(n_sensors, experts)
        nn.init.zeros_(self.sensor_bias.weight)
        self.experts = nn.ModuleList(Mlp(dim, hidden_dim, drop=drop) for _ in range(experts))

    def route(self, x: torch.Tensor, sensor_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities (N, E), chosen experts (N, k) and their gate values (N, k)."""
        logits = self.router(x).float() + self.sensor_bias(sensor_ids).float()
        probs = logits.softmax(dim=-1)
        gates, chosen = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:  # renormalise over the chosen experts (GShard); top-1 keeps p so the router learns
            gates = gates / gates.sum(dim=-1, keepdim=True)
        return probs, chosen, gates

    def capacity(self, n_tokens: int) -> int:
        """Slots per expert: capacity_factor * N * k / E in training, unlimited in eval."""
        if not self.training:
            return n_tokens * self.top_k
        return max(1, math.ceil(self.capacity_factor * n_tokens * self.top_k / self.experts_n))

    def forward(self, x: torch.Tensor, sensor_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Route each token of x (..., D) to its top-k experts; sensor_ids has x's leading shape."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        sensor_ids = sensor_ids.reshape(-1)
        n = x.shape[0]
        probs, chosen, gates = self.route(x, sensor_ids)
        aux = switch_balance_loss(probs, chosen[:, 0], self.experts_n)

        # Flatten assignments choice-major, rank by (choice, -gate), then stable-sort by expert.
        expert_of = chosen.t().reshape(-1)
        gate_of = gates.t().reshape(-1)
        token_of = torch.arange(n, device=x.device).repeat(self.top_k)
        choice_of = torch.arange(self.top_k, device=x.device).repeat_interleave(n)
        priority = torch.argsort(choice_of.to(gate_of.dtype) * 2.0 - gate_of)
        order = priority[torch.argsort(expert_of[priority], stable=True)]
        counts = torch.bincount(expert_of, minlength=self.experts_n)
        starts = torch.cumsum(counts, 0) - counts
        position = torch.arange(order.numel(), device=x.device) - starts[expert_of[order]]
        cap = self.capacity(n)
        order = order[position < cap]
        kept = counts.clamp(max=cap).tolist()

        tokens = token_of[order]
        inputs = x.index_select(0, tokens)
        outputs = [
            expert(chunk) for expert, chunk in zip(self.experts, inputs.split(kept), strict=True) if chunk.shape[0]
        ]
        out = torch.zeros_like(x)
        if outputs:
            weighted = torch.cat(outputs) * gate_of[order].to(x.dtype).unsqueeze(1)
            out.index_add_(0, tokens, weighted)
        return out.reshape(shape), aux


def switch_balance_loss(probs: torch.Tensor, first_choice: torch.Tensor, experts: int) -> torch.Tensor:
    """Switch Transformer load-balancing loss E * sum_i f_i P_i (1 when balanced, E when collapsed)."""
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    share = torch.bincount(first_choice, minlength=experts).to(probs.dtype) / probs.shape[0]
    return experts * torch.sum(share * probs.mean(dim=0))
