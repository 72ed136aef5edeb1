"""Soft clamping (Gemma 2, https://arxiv.org/abs/2408.00118): ``value * tanh(t / value)``.

Smooth, odd and monotonic; close to the identity for ``|t| << value`` and bounded by ``value``.
Gemma 2 caps its attention logits at 50 and its final logits at 30.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SoftClamp", "softclamp"]


def softclamp(t: Tensor, value: float) -> Tensor:
    """value * tanh(t / value), elementwise."""
    return (t / value).tanh() * value


class SoftClamp(nn.Module):
    """(...) -> (...): softclamp at ``value`` (> 0); no parameters."""

    def __init__(self, value: float) -> None:
        super().__init__()
        if not value > 0:
            raise ValueError(f"SoftClamp: value must be > 0, got {value}")
        self.value = float(value)

    def forward(self, t: Tensor) -> Tensor:
        return softclamp(t, self.value)

    def extra_repr(self) -> str:
        return f"value={self.value}"
