"""Tests for the built-in byte-level corpus (anyformer.data.corpus)."""

from __future__ import annotations

import sysconfig
import time
from pathlib import Path

import pytest
import torch

from anyformer.data import (
    DEFAULT_MAX_BYTES,
    VOCAB_SIZE,
    build_corpus,
    decode,
    get_batch,
    load_splits,
)
from anyformer.data.corpus import _build_corpus_cached


def corpus_by_recipe(max_bytes: int) -> bytes:
    """The recipe the module documents, written out again: pydoc topics sorted by key, then the
    sorted top-level standard-library sources, each with its header, cut at max_bytes."""
    from pydoc_data.topics import topics

    parts = [f"### {key}\n\n{topics[key]}\n\n".encode() for key in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(p for p in stdlib.glob("*.py") if p.is_file()):
        parts.append(b"# ===== " + path.name.encode() + b" =====\n" + path.read_bytes() + b"\n")
    return b"".join(parts)[:max_bytes]


def test_build_follows_the_documented_recipe_and_is_cached():
    _build_corpus_cached.cache_clear()
    start = time.perf_counter()
    corpus = build_corpus()
    elapsed = time.perf_counter() - start
    assert corpus == corpus_by_recipe(DEFAULT_MAX_BYTES)
    assert build_corpus() is corpus  # served from the in-process cache
    assert elapsed < 2.0


def test_default_size_and_cap():
    assert len(build_corpus()) == DEFAULT_MAX_BYTES
    for cap in (1, 1000, 123_457):
        corpus = build_corpus(cap)
        assert len(corpus) == cap
        assert corpus == build_corpus()[:cap]  # smaller caps are prefixes of larger ones


def test_contains_pydoc_topics_then_stdlib_sources():
    from pydoc_data.topics import topics

    corpus = build_corpus()
    first_key = sorted(topics)[0]
    assert corpus.startswith(f"### {first_key}\n\n".encode())
    assert topics[first_key].encode() in corpus
    assert b'The "assert" statement' in corpus
    assert b"# ===== __future__.py =====\n" in corpus
    assert corpus.index(b"# ===== ") > corpus.index(topics[first_key].encode())


def test_splits_add_up():
    train, val = load_splits(val_fraction=0.1, max_bytes=10_000)
    assert train.dtype == torch.uint8 and val.dtype == torch.uint8
    assert train.dim() == 1 and val.dim() == 1
    assert len(train) + len(val) == 10_000
    assert len(val) == 1_000
    assert bytes(torch.cat([train, val]).tolist()) == build_corpus(10_000)


def test_default_splits():
    train, val = load_splits()
    assert len(train) + len(val) == DEFAULT_MAX_BYTES
    assert len(val) == round(0.05 * DEFAULT_MAX_BYTES)


def test_splits_are_copies():
    train, _ = load_splits(max_bytes=1000)
    train[0] = 0
    again, _ = load_splits(max_bytes=1000)
    assert int(again[0]) == build_corpus(1000)[0]


def test_get_batch_shape_dtype_and_range():
    train, _ = load_splits(max_bytes=50_000)
    gen = torch.Generator().manual_seed(0)
    batch = get_batch(train, 8, 32, gen)
    assert batch.shape == (8, 33)
    assert batch.dtype == torch.long
    assert int(batch.min()) >= 0 and int(batch.max()) < VOCAB_SIZE


def test_get_batch_windows_are_contiguous_slices():
    data = torch.arange(100)
    batch = get_batch(data, 16, 9, torch.Generator().manual_seed(3))
    assert batch.shape == (16, 10)
    steps = batch[:, 1:] - batch[:, :-1]
    assert torch.equal(steps, torch.ones_like(steps))
    assert int(batch[:, 0].min()) >= 0 and int(batch[:, -1].max()) <= 99


def test_get_batch_full_length_window():
    data = torch.arange(11)
    batch = get_batch(data, 3, 10, torch.Generator().manual_seed(0))
    assert torch.equal(batch, data.repeat(3, 1))


def test_get_batch_is_decided_by_the_given_generator_only():
    train, _ = load_splits(max_bytes=50_000)
    # the global RNG is moved between the calls: equal batches mean the generator decided them
    torch.manual_seed(1)
    a = get_batch(train, 4, 16, torch.Generator().manual_seed(123))
    torch.manual_seed(2)
    state = torch.get_rng_state()
    b = get_batch(train, 4, 16, torch.Generator().manual_seed(123))
    assert torch.equal(torch.get_rng_state(), state)  # and the global RNG was not consumed
    c = get_batch(train, 4, 16, torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_decode():
    assert decode(torch.tensor([104, 105])) == "hi"
    assert decode([104, 105]) == "hi"
    assert decode(b"hi") == "hi"
    assert decode(torch.tensor([[104], [105]])) == "hi"
    assert decode([0xFF]) == "\ufffd"
    assert decode([]) == ""
    text = "héllo wörld"
    assert decode(list(text.encode())) == text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.5}, "val_fraction"),
        ({"val_fraction": "0.1"}, "val_fraction"),
        ({"val_fraction": 1e-9, "max_bytes": 100}, "val_fraction"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"max_bytes": -5}, "max_bytes"),
        ({"max_bytes": 1.5}, "max_bytes"),
    ],
)
def test_load_splits_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_splits(**kwargs)


def test_build_corpus_error_names_max_bytes():
    with pytest.raises(ValueError, match="max_bytes"):
        build_corpus(0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.arange(10), 2, 10), r"seq_len \+ 1"),
        ((torch.arange(10), 0, 4), "batch_size"),
        ((torch.arange(10), 2, 0), "seq_len"),
        ((torch.arange(10).reshape(2, 5), 2, 2), "data"),
        (([1, 2, 3], 1, 1), "data"),
    ],
)
def test_get_batch_errors_name_the_argument(args, message):
    with pytest.raises(ValueError, match=message):
        get_batch(*args)


def test_decode_rejects_non_bytes():
    with pytest.raises(ValueError, match="tokens"):
        decode([256])
    with pytest.raises(ValueError, match="tokens"):
        decode([-1])
