"""x-transformers keywords that anyformer knows but does not implement yet.

They are recognised (so a typo still gets a did-you-mean, and the real name is not mistaken for a
typo) but raise ``NotImplementedError`` naming the keyword: nothing is ever silently ignored.
Each feature issue removes its names from these tables as it lands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .._version import __version__

__all__ = [
    "LATER_ATTENTION",
    "LATER_FORWARD",
    "LATER_STACK",
    "LATER_WRAPPER",
    "raise_if_later",
]

ATTENTION = "attention variant"
POSITIONS = "positional scheme"
STRUCTURE = "stack structure option"

#: Attention keywords of the seed design (reached as ``attn_*`` / ``cross_attn_*`` on a stack).
#: All implemented (the Attention issue); the table stays for later attention keywords.
LATER_ATTENTION: dict[str, str] = {}

#: Stack keywords of the seed design.
LATER_STACK: dict[str, str] = {}

#: TransformerWrapper keywords of the seed design.
LATER_WRAPPER: dict[str, str] = {}

#: Forward keywords of the seed design (wrapper and stack).
#: All implemented (the Positions issue); the table stays for later forward keywords.
LATER_FORWARD: dict[str, str] = {}


def raise_if_later(
    owner: str, names: Iterable[str], registry: Mapping[str, str], prefix: str = ""
) -> None:
    """Raise NotImplementedError for the first name that is known but not implemented yet."""
    for name in names:
        if name in registry:
            raise NotImplementedError(
                f"{owner}: keyword {prefix + name!r} ({registry[name]}) is not available yet "
                f"in anyformer {__version__}"
            )
