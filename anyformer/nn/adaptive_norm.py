"""Norms conditioned on a vector (adaptive LayerNorm / RMSNorm, DiT
https://arxiv.org/abs/2212.09748): the gain is ``1 + to_gamma(condition)``, a bias-free linear
map of the condition that starts at zero (so the norm starts as the plain one, gain 1).

``condition``: (b, dim_condition) for one vector per sequence, or (b, n, dim_condition) per
token. The stack hands every block its forward's ``condition``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AdaptiveLayerNorm", "AdaptiveRMSNorm", "as_rows"]


def as_rows(condition: Tensor) -> Tensor:
    """(b, d) -> (b, 1, d), so it broadcasts over the rows; (b, n, d) unchanged."""
    return condition.unsqueeze(1) if condition.ndim == 2 else condition


class _Adaptive(nn.Module):
    takes_condition = True  # forward(x, condition): a stack's blocks hand it the condition

    def __init__(self, dim: int, dim_condition: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.to_gamma = nn.Linear(dim_condition or dim, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.to_gamma.weight)

    def gain(self, condition: Tensor) -> Tensor:
        return self.to_gamma(as_rows(condition)) + 1.0


class AdaptiveLayerNorm(_Adaptive):
    """LayerNorm without its own gain, times 1 + to_gamma(condition)."""

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        return F.layer_norm(x, (self.dim,), eps=self.eps) * self.gain(condition)


class AdaptiveRMSNorm(_Adaptive):
    """x / rms(x) times 1 + to_gamma(condition)."""

    def __init__(self, dim: int, dim_condition: int | None = None, eps: float = 1e-12) -> None:
        super().__init__(dim, dim_condition, eps)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        return F.rms_norm(x, (self.dim,), eps=self.eps) * self.gain(condition)
