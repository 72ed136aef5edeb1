"""The attention kernel: softmax(q k^T * scale + bias) v, by the fused SDPA path or the explicit one.

Both paths take the same AttentionMask (keep-mask, causality, additive bias) and give the same
result. The path is chosen at construction: fused unless an option must see the attention matrix.
The explicit path is also the one that hands back attention maps (``return_attn``, for that call
only), and the one variants that must see the matrix extend, through hooks chosen at construction:

- ``logit_hooks``: on the scaled logits before bias and masking (pre-softmax talking heads);
- ``biased_logit_hooks``: after the bias, before masking (softclamped logits, Gemma 2);
- ``masked_logit_hooks``: after bias and masking, before the softmax (sparse top-k, so that
  top-k never sees masked keys);
- ``prob_hooks``: on the probabilities after the softmax and its dropout (post-softmax talking
  heads).

A hook is an ``nn.Module`` mapping a (b, h, i, j) tensor to one of the same shape.

Grouped-query attention: k/v may have fewer heads than q (kv_heads dividing heads); query head h
reads key/value head ``h // (heads // kv_heads)``. Neither path copies k/v per query head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import AttentionMask
from .sliding_window import banded_attention, use_banded

__all__ = ["Attend", "Intermediates"]

# F.scaled_dot_product_attention(enable_gqa=...) exists from torch 2.5 on
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


@dataclass
class Intermediates:
    """What one attention layer can report about itself."""

    qk_similarities: Tensor | None = None  # scaled logits (+ carried scores), before any hook
    pre_softmax_attn: Tensor | None = None  # logits as the softmax saw them (bias, masks, top-k)
    post_softmax_attn: Tensor | None = None  # attention weights (before dropout)
    # what residual attention carries to the next layer: the logits after bias and masks but
    # before the masked-logit hooks (sparse top-k is this layer's reading of its logits, not a
    # score: its lowest-float fills, mixed across heads by the next layer's talking heads, gave
    # inf - inf = NaN)
    carried_scores: Tensor | None = None
    cached_kv: tuple[Tensor, Tensor] | None = None
    layer_type: str | None = None

    def to_tuple(self) -> tuple:
        return (self.qk_similarities, self.pre_softmax_attn, self.post_softmax_attn)


def _grouped_matmul(a: Tensor, b: Tensor) -> Tensor:
    """a (B, h, i, x) @ b (B, kvh, x, y) -> (B, h, i, y), query head h using b's head h // g."""
    batch, heads, i, _ = a.shape
    kv_heads = b.shape[1]
    if kv_heads == heads:
        return a @ b
    out = a.reshape(batch, kv_heads, (heads // kv_heads) * i, a.shape[-1]) @ b
    return out.view(batch, heads, i, b.shape[-1])


class Attend(nn.Module):
    """Scaled dot-product attention with a fused and an explicit path."""

    def __init__(
        self,
        *,
        flash: bool = False,
        explicit: bool = False,
        dropout: float = 0.0,
        scale: float | None = None,
        logit_hooks: Sequence[nn.Module] = (),
        biased_logit_hooks: Sequence[nn.Module] = (),
        masked_logit_hooks: Sequence[nn.Module] = (),
        prob_hooks: Sequence[nn.Module] = (),
        carries_scores: bool = False,
    ):
        """``flash``: insist on the fused path; ``explicit``: always the explicit path;
        ``carries_scores``: forward receives the previous layer's logits (residual attention),
        which only the explicit path can add."""
        super().__init__()
        self.logit_hooks = nn.ModuleList(logit_hooks)
        self.biased_logit_hooks = nn.ModuleList(biased_logit_hooks)
        self.masked_logit_hooks = nn.ModuleList(masked_logit_hooks)
        self.prob_hooks = nn.ModuleList(prob_hooks)
        self.carries_scores = carries_scores
        if flash and (self.needs_explicit or explicit):
            raise ValueError(
                "Attend: flash=True cannot run attention-matrix hooks; they need the explicit path"
            )
        self.flash = flash
        self.fused = not (explicit or self.needs_explicit)
        self.dropout = dropout
        self.scale = scale

    @property
    def needs_explicit(self) -> bool:
        """Whether some option must see the attention matrix (no fused kernel then)."""
        hooks = len(self.logit_hooks) + len(self.biased_logit_hooks)
        hooks += len(self.masked_logit_hooks) + len(self.prob_hooks)
        return bool(hooks) or self.carries_scores

    @property
    def path(self) -> str:
        """'fused' or 'explicit': the path a call without return_attn takes."""
        return "fused" if self.fused else "explicit"

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask = AttentionMask(),  # noqa: B008 - frozen, never mutated
        return_attn: bool = False,
        prev_attn: Tensor | None = None,
    ) -> tuple[Tensor, Intermediates | None]:
        """q (b, h, i, d), k (b, kvh, j, d), v (b, kvh, j, d_v) -> (b, h, i, d_v) and, if asked
        (or on the explicit path), the attention maps. ``prev_attn`` (b, h, i, j): logits carried
        from the previous layer (residual attention), added to the scaled logits."""
        if self.fused and not return_attn:
            out, inter = self.fused_attention(q, k, v, mask), None
        else:
            out, inter = self.explicit_attention(q, k, v, mask, prev_attn)
        if mask.row_valid is not None:
            out = out * mask.row_valid
        return out, inter

    def fused_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> Tensor:
        dropout = self.dropout if self.training else 0.0
        if mask.band is not None and use_banded(mask, q.shape[-2]):  # sliding window, O(n W)
            return banded_attention(q, k, v, mask.band, scale=self.scale, dropout_p=dropout)
        attn_mask, is_causal = mask.sdpa_args(q.shape[-2], k.shape[-2], q.dtype, q.device)
        gqa = k.shape[1] != q.shape[1]
        if gqa and not _SDPA_GQA:  # pragma: no cover - torch < 2.5
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            gqa = False
        kwargs = {"enable_gqa": True} if gqa else {}
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=dropout,
            is_causal=is_causal,
            scale=self.scale,
            **kwargs,
        )

    def explicit_attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask,
        prev_attn: Tensor | None = None,
    ) -> tuple[Tensor, Intermediates]:
        scale = q.shape[-1] ** -0.5 if self.scale is None else self.scale
        sim = _grouped_matmul(q, k.transpose(-1, -2)) * scale
        if prev_attn is not None:
            sim = sim + prev_attn
        qk_similarities = sim
        for hook in self.logit_hooks:
            sim = hook(sim)
        if mask.bias is not None:
            sim = sim + mask.bias.to(sim.dtype)
        for hook in self.biased_logit_hooks:
            sim = hook(sim)
        keep = mask.keep(q.shape[-2], k.shape[-2], q.device)
        if keep is not None:
            sim = sim.masked_fill(~keep, torch.finfo(sim.dtype).min)
        carried_scores = sim
        for hook in self.masked_logit_hooks:
            sim = hook(sim)
        # half precision softmaxes in float32; float32/float64 stay as they are
        attn = sim.softmax(dim=-1, dtype=torch.promote_types(sim.dtype, torch.float32))
        attn = attn.to(q.dtype)
        if mask.row_valid is not None:
            attn = attn * mask.row_valid  # rows with no key attend to nothing
        post = attn
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        for hook in self.prob_hooks:
            attn = hook(attn)
        out = _grouped_matmul(attn, v)
        inter = Intermediates(
            qk_similarities=qk_similarities,
            pre_softmax_attn=sim,
            post_softmax_attn=post,
            carried_scores=carried_scores,
        )
        return out, inter
