"""Tensor-product attention: each head output o becomes o * r + o, with a role vector r
computed from the layer input per head. Schlag et al., https://arxiv.org/abs/2208.06061
(the residual form x-transformers uses)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .projection import InputProjection

__all__ = ["TensorProduct"]


class TensorProduct(InputProjection):
    """``to_r``: Linear(dim -> kv_heads * value_dim); query head h uses role head h // group."""

    def __init__(self, dim: int, kv_heads: int, value_dim: int) -> None:
        super().__init__(dim, kv_heads * value_dim, bias=False)
        self.kv_heads = kv_heads

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        r = F.linear(x, self.weight).view(b, n, self.kv_heads, -1).transpose(1, 2)
        heads = out.shape[1]
        if heads != self.kv_heads:
            r = r.repeat_interleave(heads // self.kv_heads, dim=1)
        return out * r + out
