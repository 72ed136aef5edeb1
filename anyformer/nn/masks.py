"""Attention masks: combined once per forward into what the kernel needs (often nothing)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["AttentionMask", "build_attention_mask", "causal_keep_mask", "expand_attn_mask"]


@dataclass(frozen=True)
class AttentionMask:
    """What the attention kernel needs: a boolean keep-mask, or SDPA's is_causal, or nothing,
    plus an optional additive bias on the logits (ALiBi, T5 buckets, ...).

    ``mask`` broadcasts to (b, h, i, j), True = may attend; rows that have no key at all are
    opened (to avoid NaN) and zeroed afterwards through ``row_valid`` (b|1, h|1, i, 1).
    ``bias`` broadcasts to (b, h, i, j) and is added to the scaled logits before masking.
    ``band`` (a sliding window of W keys, ``nn/sliding_window.py``): query i sees only the keys
    j with i - W < j <= i (causality included), materialised only when a kernel needs a mask.
    """

    mask: Tensor | None = None
    is_causal: bool = False
    row_valid: Tensor | None = None
    bias: Tensor | None = None
    band: int | None = None

    def with_bias(self, bias: Tensor | None) -> AttentionMask:
        """This mask with `bias` added to (or set as) its additive bias."""
        if bias is None:
            return self
        total = bias if self.bias is None else self.bias + bias
        return replace(self, bias=total)

    def keep(self, q_len: int, k_len: int, device: torch.device) -> Tensor | None:
        """The boolean keep-mask, materialising causality (and a band) only when implicit."""
        if self.band is not None:
            q_pos = torch.arange(k_len - q_len, k_len, device=device)
            distance = q_pos.unsqueeze(-1) - torch.arange(k_len, device=device)
            band = (distance >= 0) & (distance < self.band)
            return band if self.mask is None else band & self.mask
        if self.is_causal:
            return causal_keep_mask(q_len, k_len, device)
        return self.mask

    def sdpa_args(
        self, q_len: int, k_len: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor | None, bool]:
        """(attn_mask, is_causal) for F.scaled_dot_product_attention."""
        if self.band is not None and self.bias is None:
            return self.keep(q_len, k_len, device), False
        if self.bias is None:
            return self.mask, self.is_causal
        bias = self.bias.to(dtype)
        keep = self.keep(q_len, k_len, device)
        if keep is None:
            return bias, False
        return torch.where(keep, bias, torch.finfo(dtype).min), False


def causal_keep_mask(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """(i, j) bool, True where key j is not in the future of query i (queries are the last i)."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    return k_pos <= q_pos.unsqueeze(-1)


def expand_attn_mask(attn_mask: Tensor) -> Tensor:
    """(i, j) / (h, i, j) / (b, h, i, j) -> 4-D."""
    while attn_mask.ndim < 4:
        attn_mask = attn_mask.unsqueeze(0)
    return attn_mask


def build_attention_mask(
    *,
    q_len: int,
    k_len: int,
    causal: bool,
    key_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    device: torch.device | None = None,
) -> AttentionMask:
    """Combine key padding (b, j), an explicit attn_mask and causality into one AttentionMask."""
    mask = None
    if key_mask is not None:
        mask = key_mask[:, None, None, :]
    if attn_mask is not None:
        attn_mask = expand_attn_mask(attn_mask)
        mask = attn_mask if mask is None else mask & attn_mask
    if causal and q_len > 1:
        if mask is None and q_len == k_len:
            return AttentionMask(is_causal=True)
        keep = causal_keep_mask(q_len, k_len, device)
        mask = keep if mask is None else mask & keep
    if mask is None:
        return AttentionMask()
    row_valid = mask.any(dim=-1, keepdim=True)
    return AttentionMask(mask=mask | ~row_valid, row_valid=row_valid)
