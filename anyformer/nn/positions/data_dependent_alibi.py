"""Data-dependent ALiBi: the forget gate of the Forgetting Transformer (Lin et al.,
https://arxiv.org/abs/2503.02130).

Each token t writes a per-head forget gate f_t = sigmoid(w_h . x_t + b_h) (b_h starts at
``bias_init``, so the gates start nearly open). With c_t = sum_{s <= t} log f_t (a cumulative sum
of log-sigmoids, times ``post_log_scale``), query i adds ``c_i - c_j = sum_{j < s <= i} log f_s``
(<= 0) to its logit for key j <= i: a learned, input-dependent decay that replaces ALiBi's fixed
slope. Causal self-attention only. In cached decoding the layer's cache keeps c_j of every cached
key, so a step computes only its new gates.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DataDependentAlibi", "PerRowDataDependentAlibi"]

_EXTRA = "forget_cumsum"
_ROW_KEYS = "forget_keys"


class DataDependentAlibi(nn.Module):
    """x (b, n, dim) -> additive bias (b, heads, n, k) of causal self-attention (k = n, or the
    cached keys plus n with a cache)."""

    def __init__(
        self, dim: int, heads: int, bias_init: float = 5.0, post_log_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.heads, self.bias_init, self.post_log_scale = heads, bias_init, post_log_scale
        self.to_forget_gates = nn.Linear(dim, heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The Linear's default weight; the gate bias at ``bias_init`` (gates start open)."""
        self.to_forget_gates.reset_parameters()
        nn.init.constant_(self.to_forget_gates.bias, self.bias_init)

    def cumulative(self, x: Tensor) -> Tensor:
        """(b, n, dim) -> c (b, heads, n): the cumulative log forget gates of the rows."""
        gates = F.logsigmoid(self.to_forget_gates(x)) * self.post_log_scale
        return gates.transpose(1, 2).cumsum(dim=-1)

    def forward(self, x: Tensor, cache: Any = None) -> Tensor:
        c = self.cumulative(x)
        keys = c if cache is None else _cached(cache, c)
        return c.unsqueeze(-1) - keys.unsqueeze(-2)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, bias_init={self.bias_init}, post_log_scale={self.post_log_scale}"
        )


def _extras(cache: Any) -> dict[str, Tensor]:
    extras = getattr(cache, "extras", None)
    if extras is None:
        raise ValueError(
            "attn_data_dependent_alibi: this cache keeps keys and values only "
            f"({type(cache).__name__}); decode with a KVCache (not a static/compiled cache)"
        )
    return extras


def _previous(cache: Any, name: str) -> Tensor | None:
    """The layer's buffer ``name`` when the cache already holds keys (None on its first call)."""
    buf = _extras(cache).get(name)
    if cache.parent.length > 0 and buf is None:
        raise ValueError("attn_data_dependent_alibi: the cache holds keys this layer did not write")
    return buf if cache.parent.length > 0 else None


def _store(cache: Any, name: str, new: Tensor) -> Tensor:
    """Write ``new`` (b, h, n, ...) at the cache's length in the layer's buffer ``name`` (grown
    like the keys); return the columns of every key so far (b, h, length + n, ...)."""
    extras = _extras(cache)
    start, n = cache.parent.length, new.shape[2]
    end, buf = start + n, extras.get(name)
    if buf is None or end > buf.shape[2] or buf.shape[0] != new.shape[0]:
        capacity = max(end, cache.parent.capacity or 0, 0 if buf is None else 2 * buf.shape[2])
        grown = new.new_zeros(*new.shape[:2], capacity, *new.shape[3:])
        if buf is not None and start > 0:
            grown[:, :, :start] = buf[:, :, :start]
        buf = extras[name] = grown
    buf[:, :, start:end] = new
    return buf[:, :, :end]


def _cached(cache: Any, c: Tensor) -> Tensor:
    """Continue the cumulative sums after the cached keys, write them into the layer cache,
    return the sums of every key so far (b, h, start + n)."""
    previous = _previous(cache, _EXTRA)
    if previous is not None:
        start = cache.parent.length
        c = c + previous[:, :, start - 1 : start]
    return _store(cache, _EXTRA, c)


class PerRowDataDependentAlibi(nn.Module):
    """Data-dependent ALiBi with a forget gate per (query, key) pair (x-transformers 2.x's
    ``data_dependent_alibi_per_row``): f_ij = sigmoid(q_i . k_j / sqrt(d)) from small query/key
    heads of width ``dim_head``; query i adds sum_{j <= s < i} log f_is to its logit for key j
    (0 for itself). A cache keeps the small keys."""

    def __init__(
        self, dim: int, heads: int, dim_head: int = 8, post_log_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.heads, self.dim_head, self.post_log_scale = heads, dim_head, post_log_scale
        self.to_forget_gates = nn.Linear(dim, 2 * heads * dim_head, bias=False)

    def reset_parameters(self) -> None:
        self.to_forget_gates.reset_parameters()

    def forward(self, x: Tensor, cache: Any = None) -> Tensor:
        b, n, _ = x.shape
        qk = self.to_forget_gates(x).view(b, n, 2, self.heads, self.dim_head)
        q, k = qk.permute(2, 0, 3, 1, 4)  # (b, h, n, d) each
        start = 0 if cache is None else cache.parent.length
        keys = k if cache is None else _store(cache, _ROW_KEYS, k)
        logits = q @ keys.transpose(-1, -2) * self.dim_head**-0.5
        gates = F.logsigmoid(logits) * self.post_log_scale  # (b, h, n, start + n)
        rows = torch.arange(start, start + n, device=x.device).unsqueeze(-1)
        cols = torch.arange(keys.shape[2], device=x.device)
        gates = gates.masked_fill(cols >= rows, 0.0)  # s < i only
        return gates.flip(-1).cumsum(-1).flip(-1)  # sum over s >= j

    def extra_repr(self) -> str:
        return f"heads={self.heads}, dim_head={self.dim_head}, post_log_scale={self.post_log_scale}"
