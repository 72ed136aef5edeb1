"""Wrappers: token model, vision model, encoder-decoder."""

from .continuous import ContinuousTransformerWrapper
from .transformer import TransformerWrapper
from .vit import ViTransformerWrapper
from .xtransformer import XTransformer

__all__ = [
    "ContinuousTransformerWrapper",
    "TransformerWrapper",
    "ViTransformerWrapper",
    "XTransformer",
]
