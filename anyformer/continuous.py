"""x-transformers' ``continuous`` module path: the continuous wrapper and its autoregressive
wrapper (``from anyformer.continuous import ContinuousTransformerWrapper``)."""

from .generation.continuous_autoregressive import ContinuousAutoregressiveWrapper
from .wrappers.continuous import ContinuousTransformerWrapper

__all__ = ["ContinuousAutoregressiveWrapper", "ContinuousTransformerWrapper"]
