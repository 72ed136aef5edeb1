"""Checks of the decoding keywords of ``generate`` / ``stream`` / ``beam_search``.

Each raises a ``TypeError`` (wrong type) or a ``ValueError`` (out of range) naming the keyword,
what it expects and what it received. ``bool`` is not accepted where an int is expected, and
NaN fails every real-number check (the comparisons are written so that NaN never passes).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_filter_kwargs",
    "check_flag",
    "check_generator",
    "check_int",
    "check_real",
    "check_token_id",
]


def check_int(name: str, value: object, lo: int) -> int:
    """An int (not a bool) >= lo."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {lo}, got {value!r} ({type(value).__name__})")
    if not value >= lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


def check_real(name: str, value: object, lo: float | None = None, lo_open: bool = False) -> float:
    """A finite real number (int or float, not a bool), >= lo (> lo with lo_open) if lo is given."""
    bound = "" if lo is None else f" {'>' if lo_open else '>='} {lo:g}"
    expected = f"{name} must be a finite real number{bound}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{expected}, got {value!r} ({type(value).__name__})")
    v = float(value)
    above = True if lo is None else (v > lo if lo_open else v >= lo)
    if not (math.isfinite(v) and above):
        raise ValueError(f"{expected}, got {value!r}")
    return v


def check_flag(name: str, value: object) -> bool:
    """True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_token_id(name: str, value: object, num_tokens: int | None) -> None:
    """None, or an int token id in [0, num_tokens) (any int >= 0 when the vocabulary is unknown)."""
    if value is None:
        return
    span = f"[0, {num_tokens})" if num_tokens is not None else ">= 0"
    expected = f"{name} must be None or an int token id in {span}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{expected}, got {value!r} ({type(value).__name__})")
    if value < 0 or (num_tokens is not None and value >= num_tokens):
        raise ValueError(f"{expected} (num_tokens={num_tokens}), got {value!r}")


def check_generator(generator: object) -> None:
    """None or a torch.Generator."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be None or a torch.Generator, got {type(generator).__name__}"
        )


def check_filter_kwargs(
    fn: Callable[..., Tensor] | None, filter_kwargs: object, vocab: int | None, builtin: bool
) -> dict[str, Any]:
    """filter_kwargs as a dict, its names taken by `fn` and (for the built-in filters) its values
    in range: the filter runs once on a meta tensor, which checks them without any computation."""
    if filter_kwargs is None:
        return {}
    if not isinstance(filter_kwargs, Mapping):
        raise TypeError(
            f"filter_kwargs must be a dict of the filter's keywords, got "
            f"{type(filter_kwargs).__name__}"
        )
    kwargs = dict(filter_kwargs)
    if fn is None:
        return kwargs
    _check_names(fn, kwargs)
    if builtin and vocab:
        try:
            fn(torch.empty(1, vocab, device="meta"), **kwargs)
        except (TypeError, ValueError) as error:
            raise type(error)(f"filter_kwargs of {fn.__name__}: {error}") from None
    return kwargs


def _check_names(fn: Callable[..., Tensor], kwargs: dict[str, Any]) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without a readable signature
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    takes = list(params)[1:]  # the first parameter is the logits
    for name in kwargs:
        if name not in takes:
            fn_name = getattr(fn, "__name__", type(fn).__name__)
            raise TypeError(
                f"filter_kwargs: {name!r} is not a keyword of {fn_name} "
                f"(it takes {', '.join(takes) or 'no keywords'})"
            )
