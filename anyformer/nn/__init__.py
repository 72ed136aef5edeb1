"""Building blocks, one concept per file."""

from .attend import Attend, Intermediates
from .attention import Attention
from .feedforward import FeedForward
from .norms import LayerNorm

__all__ = ["Attend", "Attention", "FeedForward", "Intermediates", "LayerNorm"]
