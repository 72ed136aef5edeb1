"""Pooling of a wrapper's output: learned CLS tokens in front of the sequence, or the masked
mean over the positions (``use_cls_token`` / ``num_cls_tokens`` / ``average_pool_embed``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_mean", "pool_output", "prepend_cls_tokens"]


def prepend_cls_tokens(
    h: Tensor, mask: Tensor | None, cls_tokens: Tensor
) -> tuple[Tensor, Tensor | None]:
    """h (b, n, d), mask (b, n) or None, cls_tokens (k, d) -> (b, k + n, d) with the CLS rows
    first, and the mask with k True columns in front."""
    b, k = h.shape[0], cls_tokens.shape[0]
    h = torch.cat((cls_tokens.to(h.dtype).expand(b, k, -1), h), dim=1)
    if mask is not None:
        mask = torch.cat((mask.new_ones(b, k), mask), dim=1)
    return h, mask


def masked_mean(h: Tensor, mask: Tensor | None) -> Tensor:
    """h (b, n, d) -> the mean over the n positions (b, d), only where mask (b, n) is True
    (a row without any: zeros)."""
    if mask is None:
        return h.mean(dim=1)
    weights = mask.to(h.dtype).unsqueeze(-1)
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-5)


def pool_output(
    h: Tensor, mask: Tensor | None, num_cls_tokens: int, average: bool
) -> tuple[Tensor, Tensor]:
    """The stack's output h (b, [k +] n, d) -> (pooled, the rows of the positions): with
    ``num_cls_tokens`` k > 0 the CLS rows (b, k, d), (b, d) for k == 1; with ``average`` the
    masked mean (b, d)."""
    if num_cls_tokens:
        pooled, rest = h[:, :num_cls_tokens], h[:, num_cls_tokens:]
        return (pooled[:, 0] if num_cls_tokens == 1 else pooled), rest
    if average:
        return masked_mean(h, mask), h
    return h, h
