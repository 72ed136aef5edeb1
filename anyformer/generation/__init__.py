"""Generation: sampling filters, the autoregressive wrapper and its decoding modes."""

from .autoregressive import AutoregressiveWrapper
from .beam_search import BeamResult, beam_search
from .continuous_autoregressive import ContinuousAutoregressiveWrapper
from .contrastive import contrastive_logits
from .filters import FILTERS, min_p, resolve_filter, sample, top_a, top_k, top_p
from .forgetful import forgetful_key_mask
from .session import GenerationIntermediates
from .speculative import SpeculativeStats
from .streaming import decode_bytes
from .xl_autoregressive import XLAutoregressiveWrapper

__all__ = [
    "FILTERS",
    "AutoregressiveWrapper",
    "BeamResult",
    "ContinuousAutoregressiveWrapper",
    "GenerationIntermediates",
    "SpeculativeStats",
    "XLAutoregressiveWrapper",
    "beam_search",
    "contrastive_logits",
    "decode_bytes",
    "forgetful_key_mask",
    "min_p",
    "resolve_filter",
    "sample",
    "top_a",
    "top_k",
    "top_p",
]
