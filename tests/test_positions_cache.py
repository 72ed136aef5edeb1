"""Every positional scheme under the KV cache, padding and extrapolation: cached decoding equals
full recomputation, rows of different lengths (right-padded prompts, left padding through
seq_start_pos) compute what they compute alone, and relative schemes decode past max_seq_len."""

from __future__ import annotations

import warnings

import pytest
import torch

from anyformer import AutoregressiveWrapper, Decoder, KVCache, TransformerWrapper
from anyformer.generation import session

SCHEMES = {
    "rotary": dict(rotary_pos_emb=True),
    "rotary-partial": dict(rotary_pos_emb=True, rotary_emb_dim=4),
    "xpos": dict(rotary_xpos=True, rotary_xpos_scale_base=32),
    "interpolation": dict(rotary_pos_emb=True, rotary_interpolation_factor=4.0),
    "ntk-theta": dict(rotary_pos_emb=True, rotary_base_rescale_factor=8.0, rotary_theta=500.0),
    "rotary-values": dict(rotary_pos_emb=True, attn_rotary_embed_values=True),
    "alibi": dict(alibi_pos_bias=True),
    "alibi-some-heads": dict(alibi_pos_bias=True, alibi_num_heads=1, heads=3),
    "t5": dict(rel_pos_bias=True, rel_pos_num_buckets=8, rel_pos_max_distance=20),
    "dynamic": dict(dynamic_pos_bias=True, dynamic_pos_bias_log_distance=True),
    "rotary-t5-flash": dict(rotary_pos_emb=True, rel_pos_bias=True, attn_flash=True),
    "alibi-explicit": dict(alibi_pos_bias=True, attn_kernel="explicit"),
}


def _model(
    keywords: dict, max_seq_len: int = 0, seed: int = 0, gain: float = 3.0
) -> TransformerWrapper:
    torch.manual_seed(seed)
    stack = dict(dim=16, depth=2, heads=2, attn_dim_head=8)
    stack.update(keywords)
    model = TransformerWrapper(num_tokens=32, max_seq_len=max_seq_len, attn_layers=Decoder(**stack))
    with torch.no_grad():  # larger weights: sharper attention, positions matter more
        for p in model.parameters():
            p.mul_(gain)
    return model.eval()


def _tokens(b: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 32, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", SCHEMES)
def test_cached_greedy_decoding_equals_recomputation(name):
    model = _model(SCHEMES[name])
    lm = AutoregressiveWrapper(model)
    prompt = _tokens(2, 5)
    cached = lm.generate(prompt, 48, temperature=0.0, cache_kv=True)
    assert torch.equal(cached, lm.generate(prompt, 48, temperature=0.0, cache_kv=False))
    # every cached step's last logits equal the full forward's (SPEC: 1e-5 in float32, logits
    # of the initialisation's scale)
    model = _model(SCHEMES[name], gain=1.0)
    full = torch.cat((prompt, cached), dim=1)
    with torch.no_grad():
        expected = model(full)
        cache = KVCache()
        model(full[:, :5], cache=cache)
        for t in range(5, full.shape[1]):
            step = model(full[:, t : t + 1], cache=cache, input_not_include_cache=True)
            torch.testing.assert_close(step[:, -1], expected[:, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", SCHEMES)
def test_prompts_of_different_lengths_decode_as_they_do_alone(name):
    lm = AutoregressiveWrapper(_model(SCHEMES[name]))
    prompts = [_tokens(1, n, seed=n)[0] for n in (3, 8, 5)]
    batched = lm.generate(prompts, 12, temperature=0.0)
    for row, prompt in enumerate(prompts):
        alone = lm.generate(prompt[None], 12, temperature=0.0)
        assert torch.equal(batched[row], alone[0]), row


@pytest.mark.parametrize("name", ["rotary", "rotary-values", "alibi", "t5", "dynamic"])
def test_cached_keys_are_stored_rotated_and_never_recomputed(name):
    """After decoding step by step, the cache holds exactly the keys (and values) a single
    forward over the whole sequence computes; the prefix columns are not touched by later steps.
    (xPos keys carry a centre fixed by the first call, so they differ from the single forward's
    by a per-pair factor that cancels in every product.)"""
    model = _model(SCHEMES[name], gain=1.0)
    x = _tokens(2, 9)
    with torch.no_grad():
        _, inter = model(x, return_intermediates=True)
        cache = KVCache()
        model(x[:, :4], cache=cache)
        prefix = cache.layers[0].k[:, :, :4].clone()
        for t in range(4, 9):
            model(x[:, t : t + 1], cache=cache, input_not_include_cache=True)
    assert torch.equal(cache.layers[0].k[:, :, :4], prefix)
    for layer, attn in zip(cache.layers, inter.attn_intermediates):
        expected_k, expected_v = attn.cached_kv
        torch.testing.assert_close(layer.k[:, :, :9], expected_k, atol=1e-5, rtol=0)
        torch.testing.assert_close(layer.v[:, :, :9], expected_v, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["rotary", "xpos", "alibi", "t5", "dynamic", "absolute"])
def test_left_padded_rows_compute_what_they_compute_alone(name):
    keywords = {} if name == "absolute" else SCHEMES[name]
    model = _model(keywords, max_seq_len=32 if name == "absolute" else 0, gain=1.0)
    rows = [_tokens(1, 7, seed=3)[0], _tokens(1, 4, seed=4)[0]]
    start = torch.tensor([0, 3])
    padded = torch.stack([rows[0], torch.cat((torch.zeros(3, dtype=torch.long), rows[1]))])
    follow = _tokens(2, 3, seed=5)
    with torch.no_grad():
        out = model(padded, seq_start_pos=start)
        cache = KVCache()
        model(padded, seq_start_pos=start, cache=cache)
        steps = [
            model(follow[:, t : t + 1], cache=cache, input_not_include_cache=True)[:, -1]
            for t in range(3)
        ]  # the cache remembers seq_start_pos
        for row, tokens in enumerate(rows):
            alone = model(torch.cat((tokens, follow[row]))[None])[0]
            n = tokens.shape[0]
            torch.testing.assert_close(out[row, -n:], alone[:n], atol=1e-5, rtol=0)
            for t in range(3):
                torch.testing.assert_close(steps[t][row], alone[n + t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["rotary", "alibi"])
def test_relative_positions_decode_past_max_seq_len_with_the_cache(name):
    model = _model(SCHEMES[name], max_seq_len=0)
    model.max_seq_len = 16  # what generate reads; the model has no absolute positions
    lm = AutoregressiveWrapper(model)
    assert model.capabilities()["kv_cache_beyond_max_seq_len"]
    prompt = _tokens(1, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the cache is used
        cached = lm.generate(prompt, 40, temperature=0.0, restrict_to_max_seq_len=False)
    uncached = lm.generate(
        prompt, 40, temperature=0.0, cache_kv=False, restrict_to_max_seq_len=False
    )
    assert cached.shape == (1, 40) and torch.equal(cached, uncached)
    # a sliding max_seq_len window: with one layer, hiding the keys that leave the window is
    # exactly recomputing on the window (positions restart at 0 there)
    one_layer = AutoregressiveWrapper(_model({**SCHEMES[name], "depth": 1}))
    one_layer.net.max_seq_len = 16
    cached = one_layer.generate(prompt, 40, temperature=0.0)
    assert torch.equal(cached, one_layer.generate(prompt, 40, temperature=0.0, cache_kv=False))


def test_absolute_positions_past_max_seq_len_fall_back_to_recomputation_or_raise(monkeypatch):
    monkeypatch.setattr(
        session, "_warned", session.WeakKeyDictionary()
    )  # the warning is given once per model
    model = _model({}, max_seq_len=16)
    lm = AutoregressiveWrapper(model)
    assert not model.capabilities()["kv_cache_beyond_max_seq_len"]
    prompt = _tokens(1, 6)
    with pytest.warns(UserWarning, match="decoding without a cache"):
        cached = lm.generate(prompt, 20, temperature=0.0, cache_kv=True)
    assert torch.equal(cached, lm.generate(prompt, 20, temperature=0.0, cache_kv=False))
    cache = KVCache()
    model(_tokens(1, 16), cache=cache)
    with pytest.raises(ValueError, match="exceeds max_seq_len=16 of the absolute positional"):
        model(_tokens(1, 1), cache=cache, input_not_include_cache=True)


@pytest.mark.parametrize("name", ["xpos", "alibi", "t5"])
def test_bfloat16_autocast_agrees_with_float32(name):
    model = _model(SCHEMES[name], gain=1.0)
    x = _tokens(2, 12)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)
