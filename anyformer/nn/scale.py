"""Scale: a branch whose output is multiplied by a constant (Macaron's half-step feedforward)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["Scale"]


class Scale(nn.Module):
    """fn(x) * value (Macaron, https://arxiv.org/abs/1906.02762: value = 1/2)."""

    def __init__(self, value: float, fn: nn.Module) -> None:
        super().__init__()
        self.value = value
        self.fn = fn

    def extra_repr(self) -> str:
        return f"value={self.value}"

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        return self.fn(x, **kwargs) * self.value
