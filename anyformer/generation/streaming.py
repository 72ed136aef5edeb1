"""Streaming helpers: turn a stream of byte tokens into text as it arrives.

``AutoregressiveWrapper.stream`` yields token ids step by step. For byte-level models (the
built-in corpus, ``anyformer.data``) ``decode_bytes`` turns one row of that stream into text
pieces, holding back the bytes of a UTF-8 character until it is complete, so a terminal or a
server can print each piece as soon as it is made.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator

from torch import Tensor

__all__ = ["decode_bytes"]


def decode_bytes(tokens: Iterable[Tensor | int], row: int = 0) -> Iterator[str]:
    """Text pieces of one row of a byte-token stream (invalid bytes become U+FFFD)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in tokens:
        if isinstance(token, Tensor):
            token = token.reshape(-1)[row] if token.ndim else token
            token = int(token)
        if not 0 <= token < 256:
            raise ValueError(f"decode_bytes: token {token} is not a byte (0..255)")
        piece = decoder.decode(bytes([token]))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
