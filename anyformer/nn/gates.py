"""Gates and scales on the attention heads' outputs, applied after the kernel.

- ``HeadScale``: a learned scale per head (NormFormer, https://arxiv.org/abs/2110.09456).
- ``HeadGate``: a sigmoid gate per head computed from the layer input, initialised open
  (Bondarenko et al. 2023, https://arxiv.org/abs/2306.12929).
- ``ValueGate``: an elementwise gate on the merged head outputs, sigmoid (AlphaFold2) or SiLU
  (swiglu_values), from the layer input, initialised open.
- ``attention_on_attention``: the output projection as Linear -> GLU (AoA,
  https://arxiv.org/abs/1908.06954).

Parameter names follow x-transformers (``to_v_gate``, ``to_v_head_gate``, ``head_scale_params``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .projection import InputProjection

__all__ = ["HeadGate", "HeadScale", "ValueGate", "attention_on_attention"]

_OPEN = 10.0  # gate bias at init: sigmoid(10) ~ 1, the gate starts open


class HeadScale(nn.Module):
    """(b, h, n, d) -> each head times its learned scale (init 1)."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.head_scale_params = nn.Parameter(torch.ones(1, heads, 1, 1))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.head_scale_params)

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        return out * self.head_scale_params


class HeadGate(InputProjection):
    """(b, h, n, d) head outputs, (b, n, dim) input -> head h times sigmoid(Linear(x)_h)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim, heads)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:  # built with one
            nn.init.constant_(self.bias, _OPEN)

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        gate = F.linear(x, self.weight, self.bias).sigmoid()
        return out * gate.transpose(1, 2).unsqueeze(-1)


class ValueGate(InputProjection):
    """(b, n, h * d) merged outputs, (b, n, dim) input -> out * act(Linear(x))."""

    def __init__(self, dim: int, out_dim: int, swiglu: bool = False) -> None:
        super().__init__(dim, out_dim)
        self.swiglu = swiglu

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:  # built with one
            nn.init.constant_(self.bias, _OPEN)

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        gate = F.linear(x, self.weight, self.bias)
        return out * (F.silu(gate) if self.swiglu else gate.sigmoid())


def attention_on_attention(in_dim: int, dim: int, bias: bool = False) -> nn.Sequential:
    """Linear(in_dim -> 2 * dim) then GLU: first half * sigmoid(second half)."""
    return nn.Sequential(nn.Linear(in_dim, 2 * dim, bias=bias), nn.GLU())
