"""The positions of the rows a stack computes now: given, or counted on from a KV cache.

Shared by the stack's forward (``layers.py``) and Transformer-XL memories (``memory.py``), which
write earlier rows into the cache before the stack runs its segment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cache import KVCache

__all__ = ["row_positions"]


def row_positions(
    pos: Tensor | None, n: int, cache: KVCache | None, device: torch.device
) -> Tensor:
    """(b|1, n) positions of the rows computed now: ``pos`` (n,) or (b, n) when given (or
    (b, heads, n): a row per ALiBi head), else 0..n-1 counted on from what the cache holds."""
    if pos is not None:
        return pos if pos.ndim >= 2 else pos.unsqueeze(0)
    start = 0 if cache is None else cache.length
    return torch.arange(start, start + n, device=device).unsqueeze(0)
