"""Built-in byte-level corpus assembled from text that ships with every CPython install.

The corpus needs no download. It is the concatenation of

1. the documentation strings in :mod:`pydoc_data.topics` (sorted by topic key), then
2. the source of the top-level ``*.py`` files of the standard library directory
   (``sysconfig.get_paths()["stdlib"]``), in sorted file-name order, skipping files that
   cannot be read,

truncated to ``max_bytes`` bytes. Each token is one byte, so the vocabulary size is 256.
The result is deterministic for a given Python installation (different Python versions
ship different docs and sources, so the exact bytes differ between versions).
"""

from __future__ import annotations

import functools
import sysconfig
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = [
    "DEFAULT_MAX_BYTES",
    "VOCAB_SIZE",
    "build_corpus",
    "decode",
    "get_batch",
    "load_splits",
]

DEFAULT_MAX_BYTES: int = 4_000_000
"""Default size cap of the built-in corpus, in bytes."""

VOCAB_SIZE: int = 256
"""Number of distinct tokens in a byte-level corpus."""


def _check_max_bytes(max_bytes: int) -> None:
    """Raise ValueError unless ``max_bytes`` is a positive integer."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")


def _pydoc_topics() -> Iterable[bytes]:
    """Yield the pydoc topic documentation strings as UTF-8 bytes, sorted by key."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - pydoc_data is part of every CPython install
        return
    for key in sorted(topics):
        yield f"### {key}\n\n{topics[key]}\n\n".encode()


def _stdlib_sources() -> Iterable[bytes]:
    """Yield the sources of the sorted top-level standard-library ``*.py`` files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    try:
        files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    except OSError:  # pragma: no cover - unreadable stdlib directory
        return
    for path in files:
        try:
            source = path.read_bytes()
        except OSError:
            continue
        yield b"# ===== " + path.name.encode() + b" =====\n" + source + b"\n"


@functools.lru_cache(maxsize=8)
def _build_corpus_cached(max_bytes: int) -> bytes:
    """Assemble the corpus, stopping as soon as ``max_bytes`` bytes are collected."""
    parts: list[bytes] = []
    total = 0
    for source in (_pydoc_topics(), _stdlib_sources()):
        for chunk in source:
            parts.append(chunk)
            total += len(chunk)
            if total >= max_bytes:
                return b"".join(parts)[:max_bytes]
    return b"".join(parts)


def build_corpus(max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Return the built-in corpus as bytes (at most ``max_bytes``), cached in-process."""
    _check_max_bytes(max_bytes)
    return _build_corpus_cached(max_bytes)


def load_splits(
    val_fraction: float = 0.05, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(train, val)`` 1-D uint8 tensors; validation is the last ``val_fraction``."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise ValueError(f"val_fraction must be a float in (0, 1), got {val_fraction!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    corpus = build_corpus(max_bytes)
    n_val = round(len(corpus) * val_fraction)
    if n_val < 1 or n_val >= len(corpus):
        raise ValueError(
            f"val_fraction={val_fraction!r} with max_bytes={max_bytes!r} leaves an empty "
            f"split (corpus has {len(corpus)} bytes)"
        )
    data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8)
    n_train = len(corpus) - n_val
    return data[:n_train].clone(), data[n_train:].clone()


def get_batch(
    data: torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return ``batch_size`` random windows of ``seq_len + 1`` tokens as a long tensor."""
    if not isinstance(data, torch.Tensor) or data.dim() != 1:
        raise ValueError("data must be a 1-D tensor of token ids")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if seq_len + 1 > data.numel():
        raise ValueError(f"seq_len + 1 = {seq_len + 1} exceeds the length of data ({data.numel()})")
    num_starts = data.numel() - seq_len
    starts = torch.randint(num_starts, (batch_size,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    return data[starts[:, None] + offsets].long()


def decode(tokens: torch.Tensor | Iterable[int] | bytes) -> str:
    """Decode byte tokens (tensor, ints or bytes) to text with ``errors="replace"``."""
    if isinstance(tokens, (bytes, bytearray)):
        raw = bytes(tokens)
    else:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.reshape(-1).tolist()
        values = [int(t) for t in tokens]
        bad = [v for v in values if not 0 <= v < VOCAB_SIZE]
        if bad:
            raise ValueError(f"tokens must be byte values in [0, 255], got {bad[0]}")
        raw = bytes(values)
    return raw.decode("utf-8", errors="replace")
