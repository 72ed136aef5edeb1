"""T5 relative position bias (Raffel et al., https://arxiv.org/abs/1910.10683, section 2.1).

Each head learns one scalar per distance bucket. Distances below ``num_buckets / 2`` (per
direction) get a bucket each; longer ones share logarithmically wider buckets up to
``max_distance``, beyond which all distances share the last one. A bidirectional stack gives the
two directions half the buckets each. As in x-transformers, the bias is multiplied by
``dim_head ** 0.5`` (it is added to logits already scaled by ``dim_head ** -0.5``); with an
explicit ``attn_scale`` it is multiplied by ``1 / attn_scale`` instead, so ``attn_scale=1``
gives T5's own logits ``q.k + bias`` (https://arxiv.org/abs/1910.10683, Hugging Face's T5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["RelativePositionBias", "rel_pos_bias_scale", "t5_bucket"]


def rel_pos_bias_scale(dim_head: int, attn_scale: float | None) -> float:
    """The factor the bias is multiplied by: ``1 / attn_scale``, or ``dim_head ** 0.5`` (the
    inverse of the default logit scale) when no ``attn_scale`` is given."""
    return dim_head**0.5 if attn_scale is None else 1.0 / attn_scale


def t5_bucket(
    distance: Tensor, *, causal: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """Bucket of each ``distance = query position - key position`` (> 0: the key is earlier)."""
    if causal:
        offset = torch.zeros_like(distance)
        n = distance.clamp(min=0)  # future keys (masked anyway) share bucket 0
    else:
        num_buckets //= 2
        offset = (distance < 0).long() * num_buckets
        n = distance.abs()
    exact = num_buckets // 2
    # log(n / exact) / log(max_distance / exact) of the remaining buckets, in float32 as T5 does
    ratio = n.clamp(min=exact).float() / exact
    spread = torch.log(ratio) / math.log(max_distance / exact) * (num_buckets - exact)
    large = (exact + spread.long()).clamp(max=num_buckets - 1)
    return offset + torch.where(n < exact, n, large)


class RelativePositionBias(nn.Module):
    """(q_pos (b|1, i), k_pos (b|1, j)) -> additive bias (b|1, heads, i, j)."""

    def __init__(
        self,
        heads: int,
        *,
        causal: bool,
        num_buckets: int = 32,
        max_distance: int = 128,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.scale = scale
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def forward(self, q_pos: Tensor, k_pos: Tensor, span: int | None = None) -> Tensor:
        distance = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)  # (b|1, i, j)
        buckets = t5_bucket(
            distance,
            causal=self.causal,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        return self.relative_attention_bias(buckets).permute(0, 3, 1, 2) * self.scale

    def extra_repr(self) -> str:
        return (
            f"causal={self.causal}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}, scale={self.scale:.4g}"
        )
