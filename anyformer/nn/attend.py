"""The attention kernel: softmax(q k^T * scale + bias) v, by the fused SDPA path or the explicit one.

Both paths take the same AttentionMask (keep-mask, causality, additive bias) and give the same
result. The explicit path is the one that can hand back attention maps, and the one variants that
must see the attention matrix extend, through hooks chosen at construction:

- ``logit_hooks``: on the scaled logits before bias and masking (e.g. pre-softmax talking heads);
- ``masked_logit_hooks``: after bias and masking, before the softmax (e.g. sparse top-k, so that
  top-k never sees masked keys);
- ``prob_hooks``: on the probabilities after the softmax (e.g. post-softmax talking heads).

A hook is an ``nn.Module`` mapping a (b, h, i, j) tensor to one of the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import AttentionMask

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

    def __init__(
        self,
        *,
        flash: bool = False,
        dropout: float = 0.0,
        scale: float | None = None,
        logit_hooks: Sequence[nn.Module] = (),
        masked_logit_hooks: Sequence[nn.Module] = (),
        prob_hooks: Sequence[nn.Module] = (),
    ):
        super().__init__()
        self.logit_hooks = nn.ModuleList(logit_hooks)
        self.masked_logit_hooks = nn.ModuleList(masked_logit_hooks)
        self.prob_hooks = nn.ModuleList(prob_hooks)
        if flash and self.needs_explicit:
            raise ValueError(
                "Attend: flash=True cannot run attention-matrix hooks; they need the explicit path"
            )
        self.flash = flash
        self.dropout = dropout
        self.scale = scale

    @property
    def needs_explicit(self) -> bool:
        """Whether some option must see the attention matrix (no fused kernel then)."""
        return bool(len(self.logit_hooks) + len(self.masked_logit_hooks) + len(self.prob_hooks))

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
        attn_mask, is_causal = mask.sdpa_args(q.shape[-2], k.shape[-2], q.dtype, q.device)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            scale=self.scale,
        )

    def explicit(
        self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask
    ) -> tuple[Tensor, Intermediates]:
        scale = q.shape[-1] ** -0.5 if self.scale is None else self.scale
        sim = (q @ k.transpose(-1, -2)) * scale
        for hook in self.logit_hooks:
            sim = hook(sim)
        if mask.bias is not None:
            sim = sim + mask.bias.to(sim.dtype)
        keep = mask.keep(q.shape[-2], k.shape[-2], q.device)
        if keep is not None:
            sim = sim.masked_fill(~keep, torch.finfo(sim.dtype).min)
        for hook in self.masked_logit_hooks:
            sim = hook(sim)
        # half precision softmaxes in float32; float32/float64 stay as they are
        attn = sim.softmax(dim=-1, dtype=torch.promote_types(sim.dtype, torch.float32))
        attn = attn.to(q.dtype)
        for hook in self.prob_hooks:
            attn = hook(attn)
        if mask.row_valid is not None:
            attn = attn * mask.row_valid  # rows with no key attend to nothing
        post = attn
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        return attn @ v, Intermediates(pre_softmax_attn=sim, post_softmax_attn=post)
