"""Learned attention sink per head (gpt-oss; StreamingLLM, https://arxiv.org/abs/2309.17453):
one learned logit s_h per head joins every softmax denominator,

    attn_ij = exp(l_ij) / (exp(s_h) + sum_j' exp(l_ij'))

so a query can give part of its weight to nothing. It is expressed as one extra key whose value
is zero and whose logit is s_h: a zero key (q . 0 = 0) plus an additive bias s_h on its column.
So the fused kernel keeps running (with a float mask); the sink never enters the KV cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import AttentionMask
from .memory_kv import prepend_keys

__all__ = ["AttentionSink"]


class AttentionSink(nn.Module):
    """(k, v, mask) -> (zero key, k), (zero value, v), the mask with the sink logit on column 0.

    ``head_attn_sink`` (heads,): the sink logits, zero at init (x-transformers 2.x)."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.head_attn_sink = nn.Parameter(torch.zeros(heads))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.head_attn_sink)

    def forward(
        self, k: Tensor, v: Tensor, mask: AttentionMask, q_len: int
    ) -> tuple[Tensor, Tensor, AttentionMask]:
        """k (b, kvh, j, d), v (b, kvh, j, d_v) -> keys/values with the sink first (j + 1)."""
        b, kv_heads, k_len, _ = k.shape
        mask = prepend_keys(mask, 1, q_len, k_len, k.device)
        sink = self.head_attn_sink.to(k.dtype).view(1, -1, 1, 1)
        column = F.pad(sink, (0, k_len))  # (1, h, 1, 1 + j): the sink logit, then zeros
        k = torch.cat((k.new_zeros(b, kv_heads, 1, k.shape[-1]), k), dim=-2)
        v = torch.cat((v.new_zeros(b, kv_heads, 1, v.shape[-1]), v), dim=-2)
        return k, v, mask.with_bias(column)

    def extra_repr(self) -> str:
        return f"heads={self.head_attn_sink.shape[0]}"
