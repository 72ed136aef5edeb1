"""Attention masks: combined once per forward into what the kernel needs (often nothing)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AttentionMask", "build_attention_mask", "causal_keep_mask", "expand_attn_mask"]


@dataclass(frozen=True)
class AttentionMask:
    """What the attention kernel needs: a boolean keep-mask, or SDPA's is_causal, or nothing.

    ``mask`` broadcasts to (b, h, i, j), True = may attend; rows that have no key at all are
    opened (to avoid NaN) and zeroed afterwards through ``row_valid`` (b|1, h|1, i, 1).
    """

    mask: Tensor | None = None
    is_causal: bool = False
    row_valid: Tensor | None = None


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
