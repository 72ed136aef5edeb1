"""Memory tokens: in front of the sequence (or again every N positions), out of the output and
of the token positions; cached decoding equals uncached."""

from __future__ import annotations

import warnings

import pytest
import torch

from anyformer import AutoregressiveWrapper, Decoder, Encoder, KVCache, TransformerWrapper


def _model(stack=Decoder, max_seq_len=16, **wrapper):
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=32,
        max_seq_len=max_seq_len,
        attn_layers=stack(dim=16, depth=2, heads=2),
        **wrapper,
    ).eval()


def _stack_input(model, x, **kwargs):
    seen = []
    handle = model.attn_layers.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    out = model(x, **kwargs)
    handle.remove()
    return out, seen[0]


def test_memory_tokens_stand_in_front_and_leave_the_output() -> None:
    model = _model(num_memory_tokens=3)
    x = torch.randint(0, 32, (2, 5))
    out, inter = model(x, return_intermediates=True)
    assert out.shape == (2, 5, 32) and inter.memory_tokens.shape == (2, 3, 16)
    _, h = _stack_input(model, x)
    assert h.shape == (2, 8, 16)
    torch.testing.assert_close(h[:, :3], model.memory_tokens.expand(2, 3, 16))
    tokens = model.token_emb(x) + model.pos_emb(torch.arange(5))  # positions 0..4: no memory
    torch.testing.assert_close(h[:, 3:], tokens)


def test_interspersed_memory_tokens_appear_every_n_positions() -> None:
    model = _model(num_memory_tokens=2, memory_tokens_interspersed_every=3, max_seq_len=0)
    x = torch.randint(0, 32, (1, 7))
    out, h = _stack_input(model, x)
    assert out.shape == (1, 7, 32)
    # layout: M t t t M t t t M t  (M = the 2 memory rows)
    memory_rows = [0, 1, 5, 6, 10, 11]
    token_rows = [2, 3, 4, 7, 8, 9, 12]
    assert h.shape == (1, 13, 16)
    for r in memory_rows:
        torch.testing.assert_close(h[0, r], model.memory_tokens[r % 5])  # period M + N = 5
    torch.testing.assert_close(h[0, token_rows], model.token_emb(x)[0])


def test_a_cache_holds_memory_rows_but_counts_token_positions_from_zero() -> None:
    model = _model(num_memory_tokens=3)
    x = torch.randint(0, 32, (2, 9))
    cache = KVCache()
    model(x[:, :4], cache=cache, input_not_include_cache=True)
    assert cache.length == 3 + 4 and cache.num_prepended == 3
    _, h = _stack_input(model, x[:, 4:5], cache=cache, input_not_include_cache=True)
    # the 5th token gets absolute position 4 (memory rows take no position)
    torch.testing.assert_close(h[:, 0], model.token_emb(x[:, 4]) + model.pos_emb(torch.tensor(4)))


@pytest.mark.parametrize("stack_kwargs", [{}, dict(rotary_pos_emb=True, attn_dim_head=16)])
def test_cached_generation_equals_uncached(stack_kwargs) -> None:
    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=32,
        max_seq_len=0,
        num_memory_tokens=2,
        attn_layers=Decoder(dim=16, depth=2, heads=2, **stack_kwargs),
    ).eval()
    assert model.can_cache_kv
    prompt = torch.randint(0, 32, (2, 4))
    wrapper = AutoregressiveWrapper(model)
    cached = wrapper.generate(prompt, 10, temperature=0.0, cache_kv=True)
    uncached = wrapper.generate(prompt, 10, temperature=0.0, cache_kv=False)
    assert torch.equal(cached, uncached)
    # and the logits of a cached step equal the full forward's
    x = torch.cat((prompt, cached), dim=1)
    cache = KVCache()
    model(x[:, :-1], cache=cache, input_not_include_cache=True)
    step = model(x[:, -1:], cache=cache, input_not_include_cache=True)
    torch.testing.assert_close(step[:, -1], model(x)[:, -1], atol=1e-5, rtol=0)


def test_memory_tokens_with_padding_stay_visible() -> None:
    model = _model(Encoder, num_memory_tokens=2)
    x = torch.randint(0, 32, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    out = model(x, mask=mask)
    alone = model(x[1:, :4])  # the padded row equals the same tokens unpadded
    torch.testing.assert_close(out[1:, :4], alone, atol=1e-5, rtol=0)


def test_interspersed_memory_refusals() -> None:
    with pytest.raises(ValueError, match="memory_tokens_interspersed_every needs a causal stack"):
        _model(Encoder, num_memory_tokens=2, memory_tokens_interspersed_every=3)
    with pytest.raises(
        ValueError, match="memory_tokens_interspersed_every needs num_memory_tokens"
    ):
        _model(memory_tokens_interspersed_every=3)
    model = _model(num_memory_tokens=1, memory_tokens_interspersed_every=3)
    assert model.can_cache_kv is False
    cache = KVCache()
    model(torch.randint(0, 32, (1, 4)), cache=cache, input_not_include_cache=True)
    with pytest.raises(ValueError, match="cannot decode with a KV cache"):
        model(torch.randint(0, 32, (1, 1)), cache=cache, input_not_include_cache=True)


def test_sliding_window_generation_with_memory_tokens_is_cached_only_when_exact() -> None:
    model = _model(num_memory_tokens=2, max_seq_len=8, use_abs_pos_emb=False)
    assert model.capabilities()["kv_cache_beyond_max_seq_len"] is False
    wrapper = AutoregressiveWrapper(model)
    prompt = torch.randint(0, 32, (2, 5))
    with warnings.catch_warnings():  # warned once per model: "decoding without a cache"
        warnings.simplefilter("ignore")
        cached = wrapper.generate(prompt, 12, temperature=0.0)
    assert torch.equal(cached, wrapper.generate(prompt, 12, temperature=0.0, cache_kv=False))


def test_left_padding_is_refused_with_memory_tokens() -> None:
    model = _model(num_memory_tokens=2)
    with pytest.raises(ValueError, match=r"seq_start_pos .* cannot be combined with memory tokens"):
        model(torch.randint(0, 32, (2, 5)), seq_start_pos=torch.tensor([0, 2]))
