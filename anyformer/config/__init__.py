"""Keyword parsing: typed, frozen, validated configuration dataclasses grouped by concern."""

from .attention import AttentionConfig
from .feedforward import FeedForwardConfig
from .options import option_docs, to_dict
from .stack import StackConfig, parse_stack_config
from .wrapper import WrapperConfig

__all__ = [
    "AttentionConfig",
    "FeedForwardConfig",
    "StackConfig",
    "WrapperConfig",
    "option_docs",
    "parse_stack_config",
    "to_dict",
]
