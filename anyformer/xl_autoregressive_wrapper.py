"""x-transformers' ``xl_autoregressive_wrapper`` module path
(``from anyformer.xl_autoregressive_wrapper import XLAutoregressiveWrapper``)."""

from .generation.xl_autoregressive import XLAutoregressiveWrapper

__all__ = ["XLAutoregressiveWrapper"]
