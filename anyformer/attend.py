"""x-transformers module path: ``anyformer.attend``."""

from .nn.attend import Attend, Intermediates

__all__ = ["Attend", "Intermediates"]
