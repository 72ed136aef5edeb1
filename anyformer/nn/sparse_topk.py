"""Explicit sparse attention: each query keeps only its k largest logits.
Zhao et al. 2019, https://arxiv.org/abs/1912.11637.

Runs after every mask (causal, padding, window, bias), so it never picks a key the query may not
see; x-transformers 1.28.2 took the top k before the causal mask (and dropped them instead of
keeping them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SparseTopK"]


class SparseTopK(nn.Module):
    """(b, h, i, j) masked logits -> the same with all but each row's k largest set to the
    lowest float (exactly k kept per row, ties broken by position)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, sim: Tensor) -> Tensor:
        if self.k >= sim.shape[-1]:
            return sim
        values, index = sim.topk(self.k, dim=-1)
        return torch.full_like(sim, torch.finfo(sim.dtype).min).scatter(-1, index, values)

    def extra_repr(self) -> str:
        return f"k={self.k}"
