"""The next-token cross-entropy of the autoregressive wrappers, without extra copies of the logits.

Logits (b, n, V) are scored as (b * n, V) rows: a view of the head's contiguous output, so the
softmax reads them in place and its gradient comes back in the head's layout. (The transposed
(b, V, n) layout that ``F.cross_entropy`` takes for sequences made the backward copy the
whole gradient once more.) Float32 and float64 logits are scored as they are; half and bfloat16
logits are upcast to float32, which the softmax needs for an accurate loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["token_cross_entropy"]

_FULL_PRECISION = (torch.float32, torch.float64)


def token_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Mean cross-entropy of logits (b, n, V) against target ids (b, n), skipping ignore_index."""
    rows = logits.reshape(-1, logits.shape[-1])
    if rows.dtype not in _FULL_PRECISION:
        rows = rows.float()
    return F.cross_entropy(rows, target.reshape(-1).long(), ignore_index=ignore_index)
