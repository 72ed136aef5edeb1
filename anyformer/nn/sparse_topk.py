"""Explicit sparse attention: each query keeps only its k largest logits.
Zhao et al. 2019, https://arxiv.org/abs/1912.11637.

Runs after every mask (causal, padding, window, bias), so it never picks a key the query may not
see; x-transformers 1.28.2 took the top k before the causal mask (and dropped them instead of
keeping them).

Ties: every logit >= the row's k-th largest is kept (threshold semantics, what later
x-transformers versions do with ``dots >= top[..., -1:]``), so a row with ties at the k-th value
keeps more than k keys. Unlike picking k indices with ``torch.topk`` (whose choice among ties is
unspecified), this does not depend on the kernel or the row length, so cached and full decoding
agree.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SparseTopK"]


class SparseTopK(nn.Module):
    """(b, h, i, j) masked logits -> the same with every logit below its row's k-th largest
    set to the lowest float (k kept per row, more where logits tie with the k-th)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, sim: Tensor) -> Tensor:
        if self.k >= sim.shape[-1]:
            return sim
        kth = sim.topk(self.k, dim=-1).values[..., -1:]
        return sim.masked_fill(sim < kth, torch.finfo(sim.dtype).min)

    def extra_repr(self) -> str:
        return f"k={self.k}"
