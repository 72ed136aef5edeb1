"""Residual connections: how a block's branch output joins the stream.

``Residual`` is the sum of the original transformer, optionally with the stream scaled by a
learned per-channel vector (NormFormer) and/or a constant (DeepNet); ``GRUGating`` replaces the
sum by a GRU cell whose input is the branch output and whose state is the stream (GTrXL).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GRUGating", "Residual"]


class Residual(nn.Module):
    """stream * scale * constant + branch output (scale: learned per channel, only if asked)."""

    def __init__(self, dim: int = 0, scale_residual: bool = False, constant: float = 1.0) -> None:
        super().__init__()
        self.residual_scale = nn.Parameter(torch.empty(dim)) if scale_residual else None
        self.constant = constant
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.residual_scale is not None:
            nn.init.ones_(self.residual_scale)

    @property
    def is_sum(self) -> bool:
        """Whether this is the plain sum x + out (no scale, constant 1)."""
        return self.residual_scale is None and self.constant == 1

    def forward(self, x: Tensor, out: Tensor) -> Tensor:
        if self.residual_scale is not None:
            x = x * self.residual_scale
        if self.constant != 1:
            x = x * self.constant
        return x + out


class GRUGating(nn.Module):
    """GRUCell(input=branch output, state=stream) at every position (GTrXL,
    https://arxiv.org/abs/1910.06764); with scale_residual the stream is scaled first."""

    def __init__(self, dim: int, scale_residual: bool = False) -> None:
        super().__init__()
        self.gru = nn.GRUCell(dim, dim)
        self.residual_scale = nn.Parameter(torch.empty(dim)) if scale_residual else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.residual_scale is not None:
            nn.init.ones_(self.residual_scale)

    def forward(self, x: Tensor, out: Tensor) -> Tensor:
        if self.residual_scale is not None:
            x = x * self.residual_scale
        d = x.shape[-1]
        return self.gru(out.reshape(-1, d), x.reshape(-1, d)).view(x.shape)
