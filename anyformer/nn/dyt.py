"""Dynamic Tanh (DyT) in place of a norm: ``weight * tanh(alpha * x) + bias``, with one learned
scalar ``alpha`` and learned per-channel ``weight`` / ``bias`` (Transformers without
Normalization, https://arxiv.org/abs/2503.10622)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DynamicTanh"]


class DynamicTanh(nn.Module):
    """weight * tanh(alpha * x) + bias over the last dim; alpha starts at ``init_alpha``."""

    def __init__(self, dim: int, init_alpha: float = 1.0) -> None:
        super().__init__()
        self.init_alpha = init_alpha
        self.alpha = nn.Parameter(torch.empty(()))
        self.weight = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.init_alpha)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x * self.alpha) * self.weight + self.bias
