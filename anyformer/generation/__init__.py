"""Generation: sampling filters and the autoregressive wrapper."""

from .autoregressive import AutoregressiveWrapper
from .filters import FILTERS, min_p, resolve_filter, sample, top_a, top_k, top_p

__all__ = [
    "FILTERS",
    "AutoregressiveWrapper",
    "min_p",
    "resolve_filter",
    "sample",
    "top_a",
    "top_k",
    "top_p",
]
