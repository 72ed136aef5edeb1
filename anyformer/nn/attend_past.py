"""``max_attend_past``: a query sees no key more than `window` positions before it.

A mask, as in x-transformers (the cost stays quadratic). Distances count positions in the
sequence of keys, the queries being the last ``q_len`` of them (so it holds under KV caching).
"""

from __future__ import annotations

import torch

from .masks import AttentionMask

__all__ = ["restrict_to_window"]


def restrict_to_window(
    mask: AttentionMask, window: int, q_len: int, k_len: int, device: torch.device
) -> AttentionMask:
    """`mask` AND (query position - key position <= window)."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    keep = (q_pos.unsqueeze(-1) - k_pos) <= window
    old = mask.keep(q_len, k_len, device)
    if old is not None:
        if mask.row_valid is not None:
            old = old & mask.row_valid
        keep = old & keep
    row_valid = keep.any(dim=-1, keepdim=True)
    return AttentionMask(mask=keep | ~row_valid, row_valid=row_valid, bias=mask.bias)
