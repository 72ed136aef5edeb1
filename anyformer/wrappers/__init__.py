"""Wrappers: token model, vision model, encoder-decoder."""

from .transformer import TransformerWrapper
from .vit import ViTransformerWrapper
from .xtransformer import XTransformer

__all__ = ["TransformerWrapper", "ViTransformerWrapper", "XTransformer"]
