"""Residual connections: how a block's branch output joins the stream."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Residual"]


class Residual(nn.Module):
    """x + branch(x): the plain residual of the original transformer."""

    def forward(self, x: Tensor, out: Tensor) -> Tensor:
        return x + out
