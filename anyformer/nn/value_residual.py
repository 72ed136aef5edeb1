"""Value residual learning (ResFormer, https://arxiv.org/abs/2410.17897): every attention layer
mixes its values with the values of the first attention layer of its kind (self / cross) in
the same forward, ``v = first + w * (v - first)``; w is 0.5, or for self-attention (with
``learned_value_residual_mix``) a per-token, per-head weight ``sigmoid(linear(x))`` of the
layer's input (as x-transformers 2.x; the first layer itself has no learned weight).

Only the rows a call computes are mixed (their values are what a KV cache keeps), so cached
decoding equals the uncached forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ValueCarry", "ValueResidualMix"]


class ValueResidualMix(nn.Module):
    """The weight of a layer's own values: sigmoid(proj(x)) as (b, heads, n, 1), or 0.5."""

    def __init__(self, dim: int, heads: int, learned: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, heads) if learned else None

    def forward(self, x: Tensor) -> Tensor | float:
        if self.proj is None:
            return 0.5
        return torch.sigmoid(self.proj(x)).transpose(1, 2).unsqueeze(-1)


class ValueCarry:
    """One forward's first self- and cross-attention values (b, kv_heads, n, d_v)."""

    __slots__ = ("first_cross", "first_self")

    def __init__(self) -> None:
        self.first_self: Tensor | None = None
        self.first_cross: Tensor | None = None

    def mix(self, v: Tensor, x: Tensor, mixer: nn.Module | None, is_cross: bool) -> Tensor:
        """The first layer's values are kept (and returned as they are); a later layer's are
        mixed with them by ``mixer(x)`` (0.5 without a mixer)."""
        first = self.first_cross if is_cross else self.first_self
        if first is None:
            if is_cross:
                self.first_cross = v
            else:
                self.first_self = v
            return v
        weight = 0.5 if mixer is None else mixer(x)
        return torch.lerp(first, v, weight)
