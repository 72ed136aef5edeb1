"""Logit filters for autoregressive sampling, plus temperature / greedy sampling.

Every filter takes float logits of shape ``(..., vocab)`` and returns a new tensor of the
same shape and dtype in which the removed entries are ``-inf`` and the kept entries are
bit-for-bit the input values. Inputs are never modified in place.

These functions run inside a GPU decode loop, so they never synchronise with the host:
argument validation only looks at Python scalars and tensor shapes/dtypes, never at
tensor values. (The test-suite checks this by running every filter on ``meta`` tensors.)

Probabilities are computed in at least float32 (half / bfloat16 logits are upcast for the
softmax and cumulative sums only; the returned logits keep the input dtype).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["FILTERS", "min_p", "resolve_filter", "sample", "top_a", "top_k", "top_p"]

_NEG_INF = float("-inf")


# --------------------------------------------------------------------------- helpers


def _check_logits(logits: Tensor) -> int:
    """Validate the logits tensor (shape/dtype only, no sync) and return the vocab size."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (..., vocab), got a 0-d tensor")
    vocab = logits.shape[-1]
    if vocab == 0:
        raise ValueError(
            f"logits must have a non-empty last (vocab) dimension, got shape {tuple(logits.shape)}"
        )
    return vocab


def _check_real(
    name: str,
    value: object,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float | None:
    """Check a Python real scalar lies in the given interval; tensors are passed through unchecked."""
    if isinstance(value, Tensor):
        return None  # never inspect tensor values: that would be a host-device sync
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    above = v > lo if lo_open else v >= lo
    below = v < hi if hi_open else v <= hi
    if not (above and below):  # also rejects NaN
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def _probs(logits: Tensor) -> Tensor:
    """Softmax over the last dim in at least float32."""
    return logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


# --------------------------------------------------------------------------- filters


def top_k(logits: Tensor, frac_num_tokens: float = 0.1, k: int | None = None) -> Tensor:
    """Keep the k largest logits (Fan et al. 2018, https://arxiv.org/abs/1805.04833)."""
    vocab = _check_logits(logits)
    _check_real("frac_num_tokens", frac_num_tokens, 0.0, 1.0, lo_open=True)
    if k is None:
        k = math.ceil(float(frac_num_tokens) * vocab)
    else:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int or None, got {k!r} ({type(k).__name__})")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
    k = max(1, min(int(k), vocab))
    # topk returns exactly k indices even when several logits tie at the k-th value.
    values, indices = logits.topk(k, dim=-1)
    return torch.full_like(logits, _NEG_INF).scatter(-1, indices, values)


def top_p(logits: Tensor, thres: float = 0.9) -> Tensor:
    """Nucleus filter: smallest top set with mass >= thres (Holtzman et al. 2019, https://arxiv.org/abs/1904.09751)."""
    _check_logits(logits)
    t = _check_real("thres", thres, 0.0, 1.0, lo_open=True)
    if t == 1.0:
        # The nucleus of mass 1 is every token with non-zero probability; skip the
        # cumulative sum, whose rounding could otherwise drop the tiniest tokens.
        return logits.clone()
    # Stable sort: among tied logits the lower index ranks first (deterministic ties).
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True, stable=True)
    sorted_probs = _probs(sorted_logits)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass ranked strictly before
    # Keep a token iff mass_before < thres; the top token has mass_before == 0 so is kept.
    sorted_remove = mass_before >= thres
    remove = sorted_remove.scatter(-1, sorted_idx, sorted_remove)
    return logits.masked_fill(remove, _NEG_INF)


def top_a(logits: Tensor, min_p_pow: float = 2.0, min_p_ratio: float = 0.02) -> Tensor:
    """Drop p < min_p_ratio * max_p ** min_p_pow (BlinkDL top-a, https://github.com/BlinkDL/RWKV-LM#the-top-a-sampling-method)."""
    _check_logits(logits)
    _check_real("min_p_pow", min_p_pow, 0.0, math.inf, hi_open=True)
    _check_real("min_p_ratio", min_p_ratio, 0.0, 1.0)
    probs = _probs(logits)
    max_p = probs.amax(dim=-1, keepdim=True)
    limit = max_p.pow(min_p_pow) * min_p_ratio
    # For min_p_pow >= 1 the most probable token always passes; for 0 <= min_p_pow < 1 the
    # limit could exceed max_p, so cap it there to guarantee the argmax survives.
    limit = torch.minimum(limit, max_p)
    return logits.masked_fill(probs < limit, _NEG_INF)


def min_p(logits: Tensor, min_p: float = 0.1) -> Tensor:
    """Drop p < min_p * max_p (Nguyen et al. 2024, https://arxiv.org/abs/2407.01082)."""
    _check_logits(logits)
    _check_real("min_p", min_p, 0.0, 1.0)
    probs = _probs(logits)
    limit = probs.amax(dim=-1, keepdim=True) * min_p
    return logits.masked_fill(probs < limit, _NEG_INF)


FILTERS: dict[str, Callable[..., Tensor]] = {
    "top_k": top_k,
    "top_p": top_p,
    "top_a": top_a,
    "min_p": min_p,
}


def resolve_filter(fn_or_name: str | Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Return the filter named `fn_or_name` in FILTERS, or `fn_or_name` itself if it is callable."""
    if isinstance(fn_or_name, str):
        fn = FILTERS.get(fn_or_name)
        if fn is not None:
            return fn
        valid = ", ".join(repr(name) for name in FILTERS)
        msg = f"filter_logits_fn must be a callable or one of {valid}; got {fn_or_name!r}"
        close = difflib.get_close_matches(fn_or_name, list(FILTERS), n=1)
        if close:
            msg += f". Did you mean {close[0]!r}?"
        raise ValueError(msg)
    if callable(fn_or_name):
        return fn_or_name
    raise TypeError(
        "filter_logits_fn must be a callable or one of "
        f"{', '.join(repr(name) for name in FILTERS)}; got {fn_or_name!r} "
        f"({type(fn_or_name).__name__})"
    )


# --------------------------------------------------------------------------- sampling


def sample(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """Greedy if temperature == 0, else Gumbel-max sample of softmax(logits / T) (https://arxiv.org/abs/1411.0030)."""
    _check_logits(logits)
    t = _check_real("temperature", temperature, 0.0, math.inf, hi_open=True)
    if t == 0.0:
        return logits.argmax(dim=-1)
    # Gumbel-max: argmax(logits / T + G), G ~ Gumbel(0, 1), is an exact draw from
    # softmax(logits / T) and needs no host sync (unlike multinomial's input checks).
    # u is kept in (0, 1) so the noise is always finite: a row whose only finite logit
    # is x must return x, which -inf noise on that entry would break.
    dtype = torch.promote_types(logits.dtype, torch.float32)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=dtype)
    u = u.clamp_(min=torch.finfo(dtype).tiny)
    gumbel = -torch.log(-torch.log(u))
    scaled = logits.to(dtype) / (temperature if t is None else t)
    return (scaled + gumbel).argmax(dim=-1)
