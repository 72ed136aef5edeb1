"""Token dropout: keep a random subset of a sequence's tokens (Perceiver AR's context dropout,
https://arxiv.org/abs/2202.07765)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["drop_tokens"]


def drop_tokens(
    seq: Tensor, mask: Tensor | None, dropout: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor | None]:
    """Keep max(1, int((1 - dropout) * m)) of the m tokens of seq (b, m, d), chosen at random
    per row, kept tokens of ``mask`` (b, m) first; their order is preserved. With a mask, row i
    keeps ceil(kept_i * (1 - dropout)) of its kept tokens, the others are masked."""
    b, m = seq.shape[:2]
    keep_prob = 1.0 - dropout
    num_keep = max(1, int(keep_prob * m))
    scores = torch.rand(b, m, device=seq.device, generator=generator)
    if mask is not None:
        scores = scores.masked_fill(~mask, -1.0)  # below every kept token's score
    top = scores.topk(num_keep, dim=1).indices  # best first
    index, order = top.sort(dim=1)
    rows = torch.arange(b, device=seq.device)[:, None]
    kept = seq[rows, index]
    if mask is None:
        return kept, None
    counts = torch.ceil(mask.sum(-1) * keep_prob)
    by_rank = torch.arange(num_keep, device=seq.device) < counts[:, None]
    return kept, mask[rows, index] & by_rank.gather(1, order)
