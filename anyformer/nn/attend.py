"""The attention kernel: softmax(q k^T * scale) v, by the fused SDPA path or the explicit one.

Both paths take the same AttentionMask and give the same result; the explicit path is the one
that can hand back attention maps (and the one later variants extend).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import AttentionMask, causal_keep_mask

__all__ = ["Attend", "Intermediates"]


@dataclass
class Intermediates:
    """What one attention layer can report about itself."""

    qk_similarities: Tensor | None = None
    pre_softmax_attn: Tensor | None = None
    post_softmax_attn: Tensor | None = None
    cached_kv: tuple[Tensor, Tensor] | None = None
    layer_type: str | None = None

    def to_tuple(self) -> tuple:
        return (self.qk_similarities, self.pre_softmax_attn, self.post_softmax_attn)


class Attend(nn.Module):
    """Scaled dot-product attention with a fused (``flash``) and an explicit path."""

    def __init__(self, *, flash: bool = False, dropout: float = 0.0, scale: float | None = None):
        super().__init__()
        self.flash = flash
        self.dropout = dropout
        self.scale = scale

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask = AttentionMask(),  # noqa: B008 - frozen, never mutated
        return_attn: bool = False,
    ) -> tuple[Tensor, Intermediates | None]:
        """q (b, h, i, d), k/v (b, h, j, d) -> (b, h, i, d_v) and, if asked, the attention maps."""
        if self.flash and not return_attn:
            out, inter = self.fused(q, k, v, mask), None
        else:
            out, inter = self.explicit(q, k, v, mask)
        if mask.row_valid is not None:
            out = out * mask.row_valid
        return out, inter

    def fused(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> Tensor:
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask.mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask.is_causal,
            scale=self.scale,
        )

    def explicit(
        self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask
    ) -> tuple[Tensor, Intermediates]:
        scale = q.shape[-1] ** -0.5 if self.scale is None else self.scale
        sim = (q @ k.transpose(-1, -2)) * scale
        keep = mask.mask
        if mask.is_causal:
            keep = causal_keep_mask(q.shape[-2], k.shape[-2], q.device)
        if keep is not None:
            sim = sim.masked_fill(~keep, torch.finfo(sim.dtype).min)
        attn = sim.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        if mask.row_valid is not None:
            attn = attn * mask.row_valid  # rows with no key attend to nothing
        post = attn
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        return attn @ v, Intermediates(pre_softmax_attn=sim, post_softmax_attn=post)
