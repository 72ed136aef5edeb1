"""QK-clip (MuonClip, Kimi K2, https://arxiv.org/abs/2507.20534): after an optimiser step, every
attention head whose largest pre-softmax logit S_h exceeded ``tau`` has its query and key
projections rescaled so that the same inputs give logits times gamma_h = tau / S_h.

With one key head per query head, both projections of head h are multiplied by sqrt(gamma_h)
(x-transformers 2.x ``qk_clip_``). A key head shared by a group of query heads (grouped-query
attention) is multiplied by sqrt(min gamma over its group) and each query head by gamma_h over
that, so every head's logits still scale by exactly its own gamma_h. Biases of the projections
are scaled with their rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["head_logit_max", "qk_clip_", "qk_clip_scales"]


def head_logit_max(logits: Tensor) -> Tensor:
    """(b, h, i, j) pre-softmax logits -> (h,) the largest of each head."""
    return logits.detach().transpose(0, 1).flatten(1).amax(dim=1)


def qk_clip_scales(maxes: Tensor, tau: float, kv_heads: int) -> tuple[Tensor, Tensor]:
    """(h,) logit maxima -> (query scale per head (h,), key scale per key head (kvh,))."""
    gamma = (tau / maxes.clamp(min=torch.finfo(maxes.dtype).tiny)).clamp(max=1.0)
    group = gamma.numel() // kv_heads
    key = gamma.view(kv_heads, group).amin(dim=1).sqrt()
    return gamma / key.repeat_interleave(group), key


def _scale_rows_(tensor: Tensor | None, start: int, scales: Tensor, width: int) -> None:
    if tensor is None:
        return
    rows = tensor.narrow(0, start, scales.numel() * width)
    rows.mul_(scales.to(tensor.dtype).repeat_interleave(width).view(-1, *([1] * (rows.dim() - 1))))


@torch.no_grad()
def qk_clip_(attn: Any, pre_softmax_attn: Any, tau: float = 100.0) -> None:
    """Rescale ``attn``'s (an Attention) query/key projections in place from its pre-softmax
    logits (b, h, i, j), or the Intermediates holding them (a forward with return_attn)."""
    logits = getattr(pre_softmax_attn, "pre_softmax_attn", pre_softmax_attn)
    if not isinstance(logits, Tensor):
        raise ValueError(
            "qk_clip_: needs the pre-softmax logits (b, h, i, j) or the Intermediates of a forward "
            "with return_attn=True (return_intermediates alone may leave them out), got "
            f"{type(pre_softmax_attn).__name__}"
        )
    if not tau > 0:
        raise ValueError(f"qk_clip_: tau must be > 0, got {tau}")
    c = attn.config
    if c.use_latent_q or c.use_latent_kv:
        raise ValueError(
            "qk_clip_: latent attention (use_latent_q / use_latent_kv) is not supported"
        )
    if c.qk_norm or c.qk_rmsnorm or c.differential:
        raise ValueError(
            "qk_clip_: this layer normalises its queries and keys (qk_norm / qk_rmsnorm) or has "
            "two maps per head (differential): rescaling W_q / W_k would not scale its logits"
        )
    if logits.shape[1] != attn.heads:
        raise ValueError(
            f"qk_clip_: the logits have {logits.shape[1]} heads, this layer {attn.heads}"
        )
    q_scale, k_scale = qk_clip_scales(head_logit_max(logits).float(), tau, attn.kv_heads)
    d, qkv = attn.dim_head, attn.qkv
    if hasattr(qkv, "to_qkv"):
        for t in (qkv.to_qkv.weight, qkv.to_qkv.bias):
            _scale_rows_(t, 0, q_scale, d)
            _scale_rows_(t, attn.heads * d, k_scale, d)
    else:
        for t in (qkv.to_q.weight, qkv.to_q.bias):
            _scale_rows_(t, 0, q_scale, d)
        for t in (qkv.to_kv.weight, qkv.to_kv.bias):
            _scale_rows_(t, 0, k_scale, d)
