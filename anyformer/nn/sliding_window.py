"""``sliding_window``: causal attention over the last W keys, computed in O(n W).

The query at position i sees the keys j with ``i - W < j <= i``: W keys, itself included, as in
Mistral's and Gemma 2's ``sliding_window`` (Hugging Face's ``kv_idx > q_idx - sliding_window``).
In mask terms this is ``max_attend_past = W - 1`` (``attend_past.py``, the quadratic mask the
tests compare with); what this module adds is the cost, and padding that does not count:

- a causal mask with nothing else to combine becomes a lazy band (``AttentionMask.band``), which
  the fused kernel runs blockwise (:func:`banded_attention`): queries in blocks, each block
  attending to its own keys and the W - 1 before them, through ``F.scaled_dot_product_attention``
  with a small band mask: O(n W) time and memory instead of O(n^2);
- the KV cache keeps only the last W keys of such a layer (``LayerKVCache.update_window``, a ring
  buffer), handing back the up to W - 1 earlier keys followed by the new ones; the stack's plan,
  built over every cached column, is cut to those last columns (:func:`last_columns`);
- under a key mask, a query sees its W most recent *visible* keys
  (:func:`restrict_to_visible_window`): padding columns hold no position, so a row of a padded
  batch sees what it sees alone (the padding between a short prompt and its new tokens in
  ``generate``; with left padding this is Hugging Face's column count).
Longformer introduced the sliding window: https://arxiv.org/abs/2004.05150.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import AttentionMask

__all__ = [
    "BLOCK_RANGE",
    "banded_attention",
    "block_size",
    "last_columns",
    "restrict_to_sliding_window",
    "restrict_to_visible_window",
    "use_banded",
]

BLOCK_RANGE = (32, 64)
"""Query rows per block: W clamped to this range (measured in CPU time, one thread, n = 8192,
W = 256, 4 heads of 32 / 2 of 64: blocks of 32-64 rows ran 1.3-1.6x faster than blocks of W)."""


def block_size(window: int) -> int:
    """The query rows of one block of the blockwise kernel."""
    return min(max(window, BLOCK_RANGE[0]), BLOCK_RANGE[1])


def last_columns(plan: AttentionMask, k_len: int) -> AttentionMask:
    """`plan` cut to its last `k_len` key columns (a ring cache hands back only those keys)."""

    def cut(t: Tensor | None) -> Tensor | None:
        return t if t is None or t.shape[-1] <= k_len else t[..., -k_len:]

    if plan.mask is None and plan.bias is None:
        return plan
    return replace(plan, mask=cut(plan.mask), bias=cut(plan.bias))


def restrict_to_sliding_window(
    plan: AttentionMask, window: int, q_len: int, k_len: int, device: torch.device
) -> AttentionMask:
    """`plan` AND the causal window of `window` keys: a lazy band when the plan is causality
    alone (or nothing, one query), else the mask of ``max_attend_past = window - 1``."""
    plan = last_columns(plan, k_len)
    if k_len <= window:
        return plan  # every key the plan allows is inside every query's window
    if plan.mask is None and plan.row_valid is None:
        return replace(plan, band=window)
    return restrict_to_visible_window(plan, window, q_len, k_len, device)


def restrict_to_visible_window(
    plan: AttentionMask, window: int, q_len: int, k_len: int, device: torch.device
) -> AttentionMask:
    """`plan` AND: each query sees its `window` most recent visible keys (the plan holds
    causality). Masked columns (the padding between a short prompt and its new tokens) hold no
    position, so they do not count: a padded row sees what it sees alone. Without such holes
    this is ``max_attend_past = window - 1`` (``attend_past.restrict_to_window``), the
    reference the tests compare with."""
    old = plan.keep(q_len, k_len, device)
    if old is None:
        return replace(plan, band=window)
    if plan.row_valid is not None:
        old = old & plan.row_valid
    # visible keys from column j to the end of each row (the query's own column, by causality)
    later = old.flip(-1).cumsum(-1).flip(-1)
    visible = old & (later <= window)
    row_valid = visible.any(dim=-1, keepdim=True)
    return AttentionMask(mask=visible | ~row_valid, row_valid=row_valid, bias=plan.bias)


def use_banded(mask: AttentionMask, q_len: int) -> bool:
    """Whether the fused kernel runs blockwise for this plan: a lazy band, no additive bias,
    and enough queries that the blocks (block + W - 1 keys a row) beat masked full attention
    (about n / 2 keys a row)."""
    band = mask.band
    return band is not None and mask.bias is None and q_len >= 2 * (band + block_size(band))


def _band_mask(block: int, window: int, blocks: int, front: int, device: torch.device) -> Tensor:
    """(blocks, 1, block, block + window - 1) bool: row r of a query block sees column c of its
    key span when 0 <= r + window - 1 - c < window, and the key exists (the first block's span
    starts `front` columns before key 0). With ``blocks`` 0: the band alone, (1, 1, ...)."""
    r = torch.arange(block, device=device).unsqueeze(-1)
    c = torch.arange(block + window - 1, device=device)
    band = (c >= r) & (c <= r + window - 1)
    if not blocks:
        return band.view(1, 1, block, -1)
    key = torch.arange(blocks, device=device).view(-1, 1, 1) * block + c - front
    return (band & (key >= 0)).unsqueeze(1)


def banded_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    block: int | None = None,
) -> Tensor:
    """Causal sliding-window attention, blockwise: q (b, h, n, d), k (b, kvh, m, d),
    v (b, kvh, m, d_v) with m >= n, the queries being the last n keys -> (b, h, n, d_v).

    Query blocks of ``block`` (default :func:`block_size`) rows each attend to a span of
    block + W - 1 keys (their own block and the W - 1 keys before it), batched block-major: the
    first blocks, whose spans reach before key 0, in one SDPA call with their own masks; all
    the others in one call sharing a single band mask (broadcast, never materialised per block)."""
    b, h, n, _ = q.shape
    kv_heads, m = k.shape[1], k.shape[-2]
    block = block or block_size(window)
    blocks = -(-n // block)
    span = block + window - 1
    # keys from position (m - n) - (window - 1): `front` zero keys where that is before key 0
    first = m - n - (window - 1)
    front = max(0, -first)
    back = blocks * block - n
    k, v = k[:, :, max(0, first) :], v[:, :, max(0, first) :]
    k = F.pad(k, (0, 0, front, back))
    v = F.pad(v, (0, 0, front, back))
    q = F.pad(q, (0, 0, 0, back))
    # one batch entry per (block, row), block-major: 4-D tensors reach SDPA's fused kernels
    qb = q.view(b, h, blocks, block, -1).permute(2, 0, 1, 3, 4).reshape(blocks * b, h, block, -1)
    kb = _spans(k, span, block)
    vb = _spans(v, span, block)
    kwargs: dict[str, Any] = {"enable_gqa": True} if kv_heads != h else {}
    kwargs.update(dropout_p=dropout_p, scale=scale)
    head = min(blocks, -(-front // block))  # blocks whose span reaches before key 0
    parts = []
    if head:
        mask = _band_mask(block, window, head, front, q.device)
        mask = mask.unsqueeze(1).expand(head, b, 1, block, span).reshape(head * b, 1, block, span)
        cut = head * b
        parts.append(F.scaled_dot_product_attention(qb[:cut], kb[:cut], vb[:cut], mask, **kwargs))
    if head < blocks:
        band = _band_mask(block, window, 0, 0, q.device)
        cut = head * b
        parts.append(F.scaled_dot_product_attention(qb[cut:], kb[cut:], vb[cut:], band, **kwargs))
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    out = out.view(blocks, b, h, block, -1).permute(1, 2, 0, 3, 4).reshape(b, h, blocks * block, -1)
    return out[:, :, :n]


def _spans(t: Tensor, span: int, step: int) -> Tensor:
    """(b, h, L, d) -> (blocks * b, h, span, d): the overlapping key spans, block-major."""
    h = t.shape[1]
    spans = t.unfold(2, span, step)  # (b, h, blocks, d, span)
    return spans.permute(2, 0, 1, 4, 3).reshape(-1, h, span, t.shape[-1])
