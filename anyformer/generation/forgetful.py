"""Forgetful causal masking (Liu et al. 2022, https://arxiv.org/abs/2210.13432).

While training, each sequence hides a random subset of its keys from attention (the queries and
the targets stay), which regularises a decoder-only language model. As in x-transformers, the
number hidden per row is ``int((n + 1) * mask_prob)`` for an input of ``n + 1`` tokens, capped at
``n - 1``; the first position is never hidden, so every query keeps at least one key. The keys
hidden are the largest of ``torch.randn(b, n)`` (the global generator) outside column 0, so a
fixed ``torch.manual_seed`` fixes the mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["forgetful_key_mask"]


def forgetful_key_mask(batch: int, n: int, mask_prob: float, device: torch.device) -> Tensor:
    """(batch, n) key mask, True = attend, hiding ``min(int((n + 1) * mask_prob), n - 1)`` keys."""
    num_hidden = min(int((n + 1) * mask_prob), n - 1)
    keep = torch.ones(batch, n, dtype=torch.bool, device=device)
    scores = torch.randn(batch, n, device=device)  # drawn even when nothing is hidden
    if num_hidden <= 0:
        return keep
    scores[:, 0] = -torch.finfo(scores.dtype).max
    hidden = scores.topk(num_hidden, dim=-1).indices
    return keep.scatter(1, hidden, False)
