"""Output gate of attention: the merged head outputs o (b, n, h * d_v) become
``o * sigmoid(W o)``, before the output projection (x-transformers 2.x ``attn_output_gate``, the
"h gate" of hybrid gated attention; gated attention, https://arxiv.org/abs/2505.06708, studies
such sigmoid gates after the attention output).

``headwise=False``: one gate per feature (W: (h * d_v) x (h * d_v)); ``headwise=True``: one
gate per head, shared by its d_v features (W: h x (h * d_v)). W has no bias and starts at zero,
so every gate starts half open (sigmoid(0) = 1/2), as in x-transformers 2.x.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["OutputGate"]


class OutputGate(nn.Module):
    """(b, n, heads * value_dim) head outputs -> the same, gated by sigmoid(W o)."""

    def __init__(self, heads: int, value_dim: int, headwise: bool = False) -> None:
        super().__init__()
        self.heads, self.value_dim, self.headwise = heads, value_dim, headwise
        out_dim = heads * value_dim
        self.weight = nn.Parameter(torch.empty(heads if headwise else out_dim, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, out: Tensor) -> Tensor:
        gate = nn.functional.linear(out, self.weight).sigmoid()
        if not self.headwise:
            return out * gate
        b, n, _ = out.shape
        heads = out.view(b, n, self.heads, self.value_dim) * gate.unsqueeze(-1)
        return heads.view(b, n, -1)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, value_dim={self.value_dim}, headwise={self.headwise}"
