"""Scales on a branch output before it joins the residual stream.

``LayerScale`` (CaiT, https://arxiv.org/abs/2103.17239): a learned per-channel vector, starting
at ``init_value``. ``AdaptiveLayerScale`` (DiT's adaLN-Zero gate, https://arxiv.org/abs/2212.09748):
``sigmoid(to_gamma(condition))``, a linear map of forward's condition vector whose weight starts
at zero and bias at ``init_bias`` (a gate of sigmoid(-2) ~ 0.12 at the start).
Both take ``(out, condition)``; LayerScale ignores the condition.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .adaptive_norm import as_rows

__all__ = ["AdaptiveLayerScale", "LayerScale"]


class LayerScale(nn.Module):
    """out * gamma, gamma a learned (dim,) vector starting at init_value."""

    def __init__(self, dim: int, init_value: float = 0.0) -> None:
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_value)

    def forward(self, out: Tensor, condition: Tensor | None = None) -> Tensor:
        return out * self.gamma


class AdaptiveLayerScale(nn.Module):
    """out * sigmoid(to_gamma(condition))."""

    def __init__(self, dim: int, dim_condition: int | None = None, init_bias: float = -2.0):
        super().__init__()
        self.init_bias = init_bias
        self.to_gamma = nn.Linear(dim_condition or dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.to_gamma.weight)
        nn.init.constant_(self.to_gamma.bias, self.init_bias)

    def forward(self, out: Tensor, condition: Tensor | None = None) -> Tensor:
        if condition is None:
            raise ValueError(
                "use_adaptive_layerscale: forward needs condition= (batch, dim_condition)"
            )
        return out * torch.sigmoid(self.to_gamma(as_rows(condition)))
