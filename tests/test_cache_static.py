"""StaticCache (anyformer/cache.py): fixed buffers written in place at position tensors."""

import pytest
import torch

from anyformer.cache import StaticCache


def _cache(batch: int = 2, max_len: int = 8) -> StaticCache:
    return StaticCache(batch, max_len, [(1, 2, 3), (2, 4, 4)], torch.float32, torch.device("cpu"))


def test_buffers_have_the_static_shapes():
    cache = _cache()
    assert [tuple(layer.k.shape) for layer in cache.layers] == [(2, 1, 8, 2), (2, 2, 8, 4)]
    assert [tuple(layer.v.shape) for layer in cache.layers] == [(2, 1, 8, 3), (2, 2, 8, 4)]
    assert cache.length == 0


def test_prefill_writes_the_first_columns_and_returns_the_new_keys():
    cache = _cache()
    cache.begin_prefill()
    k, v = torch.ones(2, 1, 3, 2), torch.full((2, 1, 3, 3), 2.0)
    got_k, got_v = cache.layer(0, False).update(k, v)
    assert got_k is k and got_v is v  # causal attention over the prompt only
    assert cache.layers[0].k[:, :, :3].eq(1).all() and cache.layers[0].k[:, :, 3:].eq(0).all()
    assert cache.extend_mask(None, 2, 3, torch.device("cpu")) is None


def test_decode_writes_each_row_at_its_position_and_masks_later_columns():
    cache = _cache()
    cache.begin_decode()
    cache.at(torch.tensor([2, 5]))
    k = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1).expand(2, 1, 1, 2)
    got_k, _ = cache.layer(0, False).update(k, torch.zeros(2, 1, 1, 3))
    assert got_k.shape == (2, 1, 8, 2)  # the whole buffer
    written = got_k[:, 0, :, 0]
    expected = torch.zeros(2, 8)
    expected[0, 2], expected[1, 5] = 1.0, 2.0
    assert torch.equal(written, expected)
    mask = cache.extend_mask(None, 2, 1, torch.device("cpu"))
    assert mask.tolist() == [[c <= 2 for c in range(8)], [c <= 5 for c in range(8)]]
    assert cache.extend_positions(torch.tensor([[2], [5]]), 1).tolist() == [list(range(8))]


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"batch and max_len must be >= 1, got batch=0, max_len=4"):
        StaticCache(0, 4, [(1, 2, 2)], torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"slot 2 \(self-attention\) is not one of its 2"):
        _cache().layer(2, False)
    with pytest.raises(ValueError, match=r"slot 0 \(cross-attention\)"):
        _cache().layer(0, True)
