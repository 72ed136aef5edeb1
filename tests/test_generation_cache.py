"""KVCache.reorder (beam search) and KVCache.truncate (speculative rollback) against fresh prefills."""

from __future__ import annotations

import warnings

import pytest
import torch
from gen_models import decoder_net
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer import AutoregressiveWrapper, Encoder, KVCache, TransformerWrapper

V = 32
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def tokens(b, n, seed):
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


def prefill(net, x, **kw):
    cache = KVCache(capacity=40)
    logits = net(x, cache=cache, **kw)
    return cache, logits


def assert_same_cache(cache, fresh):
    assert cache.length == fresh.length
    for mine, ref in zip(cache.layers, fresh.layers, strict=True):
        n = cache.length
        torch.testing.assert_close(mine.k[:, :, :n], ref.k[:, :, :n], **TOL)
        torch.testing.assert_close(mine.v[:, :, :n], ref.v[:, :, :n], **TOL)


NET = decoder_net(seed=0)


# --------------------------------------------------------------------------- truncate


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 16),
    cut=st.integers(0, 16),
    more=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_truncate_then_continue_equals_fresh_prefill(n, cut, more, seed):
    cut = min(cut, n)
    with torch.no_grad():
        x, y = tokens(2, n, seed), tokens(2, cut + more, seed + 1)
        y[:, :cut] = x[:, :cut]  # same prefix, then a different continuation
        cache, _ = prefill(NET, x)
        cache.truncate(cut)
        assert cache.length == cut
        step = NET(y[:, cut:], cache=cache, input_not_include_cache=True)
        fresh, full = prefill(NET, y)
        torch.testing.assert_close(step, full[:, cut:], **TOL)
        assert_same_cache(cache, fresh)


def test_truncate_forgets_the_key_mask_of_rolled_back_positions():
    x = tokens(2, 10, 3)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 7:9] = False  # masked positions that the rollback removes
    mask[1, 2] = False  # a masked position that it keeps
    cache, _ = prefill(NET, x, mask=mask)
    cache.truncate(6)
    y = tokens(2, 4, 4)
    step = NET(y, cache=cache, input_not_include_cache=True)  # no mask: all new keys visible
    full = NET(
        torch.cat((x[:, :6], y), dim=1),
        mask=torch.cat((mask[:, :6], torch.ones(2, 4, dtype=torch.bool)), dim=1),
    )
    torch.testing.assert_close(step, full[:, 6:], **TOL)
    assert cache.key_mask[:, 6:10].all() and not bool(cache.key_mask[1, 2])


@pytest.mark.parametrize(
    "bad,error", [(-1, ValueError), (7, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_truncate_rejects_lengths_outside_the_cache(bad, error):
    cache, _ = prefill(NET, tokens(1, 6, 5))
    with pytest.raises(error, match="length"):
        cache.truncate(bad)


# --------------------------------------------------------------------------- reorder


def test_reorder_same_batch_moves_rows_in_place():
    x = tokens(4, 9, 6)
    rows = torch.tensor([2, 2, 0, 3])
    cache, _ = prefill(NET, x)
    ptrs = [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers]
    cache.reorder(rows)
    assert [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers] == ptrs
    fresh, _ = prefill(NET, x[rows])
    assert_same_cache(cache, fresh)
    nxt = tokens(4, 3, 7)
    step = NET(nxt, cache=cache, input_not_include_cache=True)
    torch.testing.assert_close(step, NET(torch.cat((x[rows], nxt), dim=1))[:, 9:], **TOL)


def test_reorder_to_another_batch_size_and_masks_follow_rows():
    x = tokens(2, 7, 8)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 1:3] = False
    rows = torch.tensor([1, 1, 0, 1, 0])
    cache, _ = prefill(NET, x, mask=mask)
    cache.reorder(rows)
    assert cache.layers[0].k.shape[0] == 5
    nxt = tokens(5, 2, 9)
    step = NET(nxt, cache=cache, input_not_include_cache=True)
    full_mask = torch.cat((mask[rows], torch.ones(5, 2, dtype=torch.bool)), dim=1)
    expected = NET(torch.cat((x[rows], nxt), dim=1), mask=full_mask)[:, 7:]
    torch.testing.assert_close(step, expected, **TOL)


def test_reorder_cross_attention_context_follows_rows():
    net = decoder_net(seed=1, cross_attend=True)
    x = tokens(3, 5, 10)
    context = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(11))
    context_mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    cache = KVCache()
    net(x, cache=cache, context=context, context_mask=context_mask)
    rows = torch.tensor([2, 0, 0])
    cache.reorder(rows)
    nxt = tokens(3, 2, 12)
    step = net(nxt, cache=cache, input_not_include_cache=True)  # context read from the cache
    full = net(
        torch.cat((x[rows], nxt), dim=1), context=context[rows], context_mask=context_mask[rows]
    )
    torch.testing.assert_close(step, full[:, 5:], **TOL)


def test_reorder_rejects_non_integer_indices():
    cache, _ = prefill(NET, tokens(2, 4, 13))
    with pytest.raises(TypeError, match="batch_indices"):
        cache.reorder(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="batch_indices"):
        cache.reorder([0, 1])


def test_the_cannot_cache_warning_is_given_once_per_model_not_once_per_process():
    """A second model that falls back to decoding without a cache says so too."""

    def encoder_lm() -> AutoregressiveWrapper:
        stack = Encoder(dim=16, depth=1, heads=2)
        return AutoregressiveWrapper(
            TransformerWrapper(num_tokens=V, max_seq_len=32, attn_layers=stack)
        )

    prompt = tokens(1, 3, seed=5)
    first, second = encoder_lm(), encoder_lm()
    for lm in (first, second):
        with pytest.warns(UserWarning, match="cannot cache keys/values; decoding without a cache"):
            assert lm.generate(prompt, 2, cache_kv=True).shape == (1, 2)
        with warnings.catch_warnings(record=True) as again:
            warnings.simplefilter("always")
            lm.generate(prompt, 2, cache_kv=True)
        assert [str(w.message) for w in again if "cannot cache" in str(w.message)] == []
