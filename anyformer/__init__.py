"""anyformer: build any transformer from keyword switches (the x-transformers API, tested and fast)."""

from ._version import __version__
from .cache import KVCache
from .generation import (
    AutoregressiveWrapper,
    ContinuousAutoregressiveWrapper,
    XLAutoregressiveWrapper,
    min_p,
    top_a,
    top_k,
    top_p,
)
from .intermediates import Intermediates, LayerIntermediates
from .nn import Attention, FeedForward
from .serialization import load_pretrained, save_pretrained
from .stack import AttentionLayers, CrossAttender, Decoder, Encoder, PrefixDecoder
from .wrappers import (
    ContinuousTransformerWrapper,
    TransformerWrapper,
    ViTransformerWrapper,
    XTransformer,
)

__all__ = [
    "Attention",
    "AttentionLayers",
    "AutoregressiveWrapper",
    "ContinuousAutoregressiveWrapper",
    "ContinuousTransformerWrapper",
    "CrossAttender",
    "Decoder",
    "Encoder",
    "FeedForward",
    "Intermediates",
    "KVCache",
    "LayerIntermediates",
    "PrefixDecoder",
    "TransformerWrapper",
    "ViTransformerWrapper",
    "XLAutoregressiveWrapper",
    "XTransformer",
    "__version__",
    "load_pretrained",
    "min_p",
    "save_pretrained",
    "top_a",
    "top_k",
    "top_p",
]
