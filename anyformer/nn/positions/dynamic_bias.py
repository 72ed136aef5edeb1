"""Dynamic position bias: a small MLP maps each relative distance to one bias per head
(continuous position bias of Swin Transformer V2, https://arxiv.org/abs/2111.09883, and
CrossFormer, https://arxiv.org/abs/2108.00154).

The MLP runs once per forward over every distance that occurs, -(span - 1) .. span - 1, and the
(i, j) bias is gathered from that table. The layer layout is x-transformers' (so checkpoints
convert by name): ``mlp.0`` = Linear(1, d) [+ bias-free LayerNorm] + SiLU, ``mlp.1..depth-1`` =
Linear(d, d) [+ LayerNorm with bias] + SiLU, ``mlp.depth`` = Linear(d, heads).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .tables import table_dtype

__all__ = ["DynamicPositionBias"]


class DynamicPositionBias(nn.Module):
    """(q_pos (b|1, i), k_pos (b|1, j)) -> additive bias (b|1, heads, i, j)."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        depth: int = 2,
        log_distance: bool = False,
        norm: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1 or dim < 1:
            raise ValueError(
                f"DynamicPositionBias: depth and dim must be >= 1, got depth={depth}, dim={dim}"
            )
        self.log_distance = log_distance
        layers: list[nn.Module] = [
            self._hidden(nn.Linear(1, dim), nn.LayerNorm(dim, bias=False) if norm else None)
        ]
        for _ in range(depth - 1):
            layers.append(self._hidden(nn.Linear(dim, dim), nn.LayerNorm(dim) if norm else None))
        layers.append(nn.Linear(dim, heads))
        self.mlp = nn.ModuleList(layers)

    @staticmethod
    def _hidden(linear: nn.Module, norm: nn.Module | None) -> nn.Sequential:
        return nn.Sequential(*(m for m in (linear, norm, nn.SiLU()) if m is not None))

    def forward(self, q_pos: Tensor, k_pos: Tensor, span: int | None = None) -> Tensor:
        """``span``: a bound with |q - k| < span for every pair (computed here when None)."""
        distance = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)  # (b|1, i, j)
        if span is None:
            span = int(distance.abs().max()) + 1 if distance.numel() else 1
        first: Any = self.mlp[0]  # Sequential(Linear, [norm,] SiLU)
        weight = first[0].weight
        # distances (and their logs) in float32 at least, then the MLP's dtype
        exact = table_dtype(weight.dtype)
        table = torch.arange(-span + 1, span, device=distance.device, dtype=exact)
        if self.log_distance:
            table = torch.sign(table) * torch.log(table.abs() + 1)
        table = table.to(weight.dtype).unsqueeze(-1)
        for layer in self.mlp:
            table = layer(table)  # (2 span - 1, heads)
        return table[distance + span - 1].permute(0, 3, 1, 2)
