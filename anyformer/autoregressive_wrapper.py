"""x-transformers module path: ``anyformer.autoregressive_wrapper``."""

from .generation.autoregressive import AutoregressiveWrapper
from .generation.filters import min_p, top_a, top_k, top_p

__all__ = ["AutoregressiveWrapper", "min_p", "top_a", "top_k", "top_p"]
