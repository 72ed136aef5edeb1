"""argparse types that check a command-line option's value as it is parsed, before any work, so
a bad value is reported under the option's name as typed: ``argument --top-p: must be in (0, 1],
got 2``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

__all__ = ["SEED_LIMIT", "int_at_least", "non_empty", "number_in", "optional", "seed"]

SEED_LIMIT = 2**63
"""Seeds are in ``[0, 2**63)``: every generator (torch, Python's random) takes them."""


def _number(kind: Callable[[str], Any], text: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        word = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {word}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer ``>= low``."""

    def convert(text: str) -> int:
        value = _number(int, text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return int(value)

    convert.__name__ = "int"
    return convert


def number_in(low: float, high: float | None, low_open: bool = False) -> Callable[[str], float]:
    """A float in ``[low, high]`` (``(low, high]`` with ``low_open``; no upper end: None)."""
    left = "(" if low_open else "["
    span = f"in {left}{low:g}, {high:g}]" if high is not None else f">= {low:g}"

    def convert(text: str) -> float:
        value = float(_number(float, text))
        below = value <= low if low_open else value < low
        if below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {span}, got {value:g}")
        return value

    convert.__name__ = "float"
    return convert


def optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``none`` (or ``null``, ``off``) -> None, else ``convert(text)``."""

    def wrapped(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null", "off") else convert(text)

    wrapped.__name__ = getattr(convert, "__name__", "value")
    return wrapped


def seed(text: str) -> int:
    """A seed in ``[0, 2**63)``."""
    value = int(_number(int, text))
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


def non_empty(text: str) -> str:
    """Text of at least one character."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text
