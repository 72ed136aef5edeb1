"""Datasets: the built-in byte-level corpus."""

from anyformer.data.corpus import (
    DEFAULT_MAX_BYTES,
    VOCAB_SIZE,
    build_corpus,
    decode,
    get_batch,
    load_splits,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "VOCAB_SIZE",
    "build_corpus",
    "decode",
    "get_batch",
    "load_splits",
]
