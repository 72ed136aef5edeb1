"""Sliding-window attention (``attn_sliding_window=W``): query i sees keys i - W < j <= i.

Checked against a float64 hand computation, against masked full attention (the same weights with
``attn_max_attend_past=W-1``, the quadratic mask path) on both kernels, against Hugging Face's
sliding-window mask function and a tiny Mistral, and cached decoding against uncached decoding;
the KV cache keeps W keys per local layer.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper
from anyformer.cache import KVCache
from anyformer.generation.compiled import unsupported
from anyformer.nn.attention import Attention
from anyformer.nn.masks import AttentionMask
from anyformer.nn.sliding_window import banded_attention, block_size, use_banded
from anyformer.stack.lean import attach

torch.set_num_threads(1)

VOCAB = 50


def reference_attention(q, k, v, window):
    """float64 softmax over the keys inside the window, written out (GQA by repetition)."""
    n, m = q.shape[-2], k.shape[-2]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1).double(), v.repeat_interleave(group, 1).double()
    distance = torch.arange(m - n, m).unsqueeze(-1) - torch.arange(m)
    keep = (distance >= 0) & (distance < window)
    logits = (q.double() @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return logits.masked_fill(~keep, -math.inf).softmax(-1) @ v


def model(seed=0, layers=None, **attn):
    """A tiny rotary Decoder (relative positions: it decodes past max_seq_len)."""
    torch.manual_seed(seed)
    stack = Decoder(
        dim=32, depth=2, heads=4, attn_dim_head=8, attn_kv_heads=2, rotary_pos_emb=True, **attn
    )
    return TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=48, use_abs_pos_emb=False, attn_layers=stack
    ).eval()


def same_weights(source, **attn):
    target = model(**attn)
    target.load_state_dict(source.state_dict())
    return target


def windows(net):
    return [b.branch.sliding_window for b in net.attn_layers.layers if b.layer_type == "a"]


# ------------------------------------------------------------------ the kernel


def test_hand_computation_of_a_tiny_case():
    """One head, d = 1, W = 2: query 2 sees keys 1 and 2 only."""
    q = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64).view(1, 1, 3, 1)
    k = torch.tensor([3.0, 1.0, -0.5], dtype=torch.float64).view(1, 1, 3, 1)
    v = torch.tensor([10.0, 20.0, 40.0], dtype=torch.float64).view(1, 1, 3, 1)
    out = banded_attention(q, k, v, 2, block=1).flatten().tolist()
    w1, w2 = math.exp(2.0 * 1.0), math.exp(2.0 * -0.5)  # query 2's logits on keys 1, 2
    a1, a0 = math.exp(-1.0 * 1.0), math.exp(-1.0 * 3.0)  # query 1 on keys 1, 0
    expected = [10.0, (a0 * 10 + a1 * 20) / (a0 + a1), (w1 * 20 + w2 * 40) / (w1 + w2)]
    assert out == pytest.approx(expected, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    prefix=st.integers(0, 12),
    window=st.integers(1, 12),
    block=st.sampled_from([None, 1, 3, 8]),
    kv_heads=st.sampled_from([1, 2, 4]),
    double=st.booleans(),
)
def test_blockwise_kernel_equals_masked_full_attention(n, prefix, window, block, kv_heads, double):
    """Every block size, key offset (cached keys before the queries), GQA group and dtype."""
    dtype = torch.float64 if double else torch.float32
    g = torch.Generator().manual_seed(n * 1000 + prefix * 10 + window)
    q = torch.randn(2, 4, n, 8, generator=g, dtype=dtype)
    k = torch.randn(2, kv_heads, n + prefix, 8, generator=g, dtype=dtype)
    v = torch.randn(2, kv_heads, n + prefix, 6, generator=g, dtype=dtype)
    out = banded_attention(q, k, v, window, block=block)
    assert out.dtype == dtype and out.shape == (2, 4, n, 6)
    tol = 1e-12 if double else 1e-5
    assert (out.double() - reference_attention(q, k, v, window)).abs().max().item() < tol


def test_band_matches_hugging_face_sliding_window_mask():
    """The lazy band is HF's ``sliding_window_causal_mask_function`` (kv_idx > q_idx - W)."""
    masking = pytest.importorskip("transformers.masking_utils")
    for window in (1, 3, 5):
        fn = masking.sliding_window_causal_mask_function(window)
        for q_len, k_len in ((9, 9), (1, 9), (4, 9)):
            offset = k_len - q_len  # cached keys before the queries
            expected = torch.tensor(
                [
                    [bool(fn(*map(torch.tensor, (0, 0, offset + i, j)))) for j in range(k_len)]
                    for i in range(q_len)
                ]
            )
            band = AttentionMask(is_causal=q_len == k_len, band=window).keep(q_len, k_len, "cpu")
            assert torch.equal(band, expected), (window, q_len, k_len)


def test_blockwise_runs_only_where_it_wins():
    window = 4
    needed = 2 * (window + block_size(window))
    assert not use_banded(AttentionMask(is_causal=True, band=window), needed - 1)
    assert use_banded(AttentionMask(is_causal=True, band=window), needed)
    bias = torch.zeros(1, 1, needed, needed)  # an additive bias (ALiBi...): the masked path
    assert not use_banded(AttentionMask(is_causal=True, band=window, bias=bias), needed)


# ------------------------------------------------------------------ the model


@pytest.mark.parametrize("length", [20, 160])  # 160 >= 2 (W + block): the blockwise kernel
def test_model_equals_masked_full_attention_on_both_kernels(length):
    sliding = model(attn_sliding_window=4)
    masked = same_weights(sliding, attn_max_attend_past=3)  # the quadratic mask path
    explicit = same_weights(sliding, attn_sliding_window=4, attn_kernel="explicit")
    ids = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = masked(ids)
        assert (sliding(ids) - expected).abs().max().item() < 1e-5
        assert (explicit(ids) - expected).abs().max().item() < 1e-5
        full = same_weights(sliding)(ids)
    assert (full - expected).abs().max().item() > 1e-2  # the window changes the logits
    paths = sliding.capabilities()["attention"]
    assert [p["window_kernel"] for p in paths] == ["banded", "banded"]
    assert [p["window_kernel"] for p in explicit.capabilities()["attention"]] == ["masked"] * 2


def test_float64_model_with_padding_equals_masked_path():
    """A key-padding mask (the masked window) and the float64 path."""
    sliding = model(attn_sliding_window=3).double()
    masked = same_weights(sliding, attn_max_attend_past=2).double()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    with torch.no_grad():
        got, expected = sliding(ids, mask=mask), masked(ids, mask=mask)
    assert (got - expected)[mask].abs().max().item() < 1e-12


def test_causal_and_local():
    """One layer, window 3: the logits at i move with tokens i-2..i only."""
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=64, use_abs_pos_emb=False,
        attn_layers=Decoder(dim=16, depth=1, heads=2, rotary_pos_emb=True, attn_sliding_window=3),
    ).eval()  # fmt: skip
    ids = torch.randint(0, VOCAB, (1, 150), generator=torch.Generator().manual_seed(5))
    changed = ids.clone()
    changed[0, 100] = (ids[0, 100] + 1) % VOCAB
    with torch.no_grad():
        diff = (net(ids) - net(changed)).abs().amax(-1)[0]
    moved = (diff > 1e-6).nonzero().flatten().tolist()
    assert moved == [100, 101, 102]


# ------------------------------------------------------------------ decoding


def decode_step_by_step(net, ids, prompt):
    """Logits of a prompt then one token at a time through a KVCache; the cache."""
    cache = KVCache()
    with torch.no_grad():
        logits = [net(ids[:, :prompt], cache=cache, input_not_include_cache=True)]
        for t in range(prompt, ids.shape[1]):
            logits.append(net(ids[:, t : t + 1], cache=cache, input_not_include_cache=True))
    return torch.cat(logits, dim=1), cache


def test_cached_logits_equal_uncached_and_ring_holds_w_keys():
    net = model(attn_sliding_window=(5, None))
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(6))
    got, cache = decode_step_by_step(net, ids, prompt=7)  # the prompt alone exceeds W
    with torch.no_grad():
        expected = net(ids)
    assert (got - expected).abs().max().item() < 1e-5
    # local layer: a ring of W = 5 keys (b, kv_heads, W, d); global layer: every key (its
    # buffer grows by doubling)
    local, full = cache.layers
    assert local.k.shape == local.v.shape == (2, 2, 5, 8)
    assert full.k.shape[-2] >= 40


def test_multi_token_steps_through_the_ring():
    """Chunks of several tokens after a prompt: keys from the ring, then the new ones."""
    net = model(attn_sliding_window=4)
    ids = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(7))
    cache, chunks = KVCache(), []
    with torch.no_grad():
        for start, end in ((0, 3), (3, 9), (9, 10), (10, 17), (17, 30)):
            chunks.append(net(ids[:, start:end], cache=cache, input_not_include_cache=True))
        expected = net(ids)
    assert (torch.cat(chunks, 1) - expected).abs().max().item() < 1e-5
    assert [layer.k.shape[-2] for layer in cache.layers] == [4, 4]


def test_greedy_cached_equals_uncached_past_window_and_max_seq_len():
    """48 + 30 tokens > max_seq_len = 48 (rotary: restrict_to_max_seq_len=False)."""
    wrapper = AutoregressiveWrapper(model(attn_sliding_window=(6, None)))
    prompt = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(8))
    kw = dict(temperature=0.0, restrict_to_max_seq_len=False)
    cached = wrapper.generate(prompt, 58, cache_kv=True, **kw)
    uncached = wrapper.generate(prompt, 58, cache_kv=False, **kw)
    assert cached.shape == (2, 58)
    assert torch.equal(cached, uncached)


def test_greedy_cached_equals_uncached_with_max_seq_len_window():
    """The default sliding max_seq_len window over local and global layers."""
    wrapper = AutoregressiveWrapper(model(attn_sliding_window=(3, None)))
    prompt = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(9))
    cached = wrapper.generate(prompt, 20, temperature=0.0, cache_kv=True)
    uncached = wrapper.generate(prompt, 20, temperature=0.0, cache_kv=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("cache_kv", [True, False])
def test_prompts_of_different_lengths_decode_like_each_row_alone(cache_kv):
    """generate right-pads short prompts: the padding between a prompt and its new tokens holds
    no position, so the window counts visible keys and the ring makes room for the padding."""
    wrapper = AutoregressiveWrapper(model(attn_sliding_window=(4, None)))
    g = torch.Generator().manual_seed(10)
    rows = [torch.randint(1, VOCAB, (n,), generator=g) for n in (9, 5, 2)]
    together = wrapper.generate(rows, 20, temperature=0.0, cache_kv=cache_kv)
    for i, row in enumerate(rows):
        alone = wrapper.generate(row.unsqueeze(0), 20, temperature=0.0, cache_kv=cache_kv)
        assert torch.equal(together[i], alone[0]), i


def test_ring_grows_by_the_prompt_padding():
    net = model(attn_sliding_window=4)
    ids = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(15))
    mask = torch.arange(9) < torch.tensor([[9], [2]])  # 7 padding columns in row 1
    cache = KVCache()
    with torch.no_grad():
        net(ids, mask=mask, cache=cache, input_not_include_cache=True)
        with pytest.raises(ValueError, match="masked \\(padding\\) tokens only in the"):
            net(ids[:, :1], mask=torch.tensor([[True], [False]]), cache=cache,
                input_not_include_cache=True)  # fmt: skip
    assert [layer.k.shape[-2] for layer in cache.layers] == [4 + 7, 4 + 7]


def test_speculative_decoding_rolls_back_inside_the_ring():
    wrapper = AutoregressiveWrapper(model(attn_sliding_window=(4, None)))
    draft = model(seed=1, attn_sliding_window=3)
    prompt = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(16))
    plain = wrapper.generate(prompt, 20, temperature=0.0)
    assert torch.equal(wrapper.generate(prompt, 20, temperature=0.0, draft_model=draft), plain)


@pytest.mark.parametrize("slack", [0, 3])
def test_truncate_rolls_back_inside_the_ring_only(slack):
    """A ring of W + slack keys rolls back slack + 1 positions, and the logits after the roll
    back equal a fresh run's."""
    net = model(attn_sliding_window=4)
    ids = torch.randint(0, VOCAB, (1, 14), generator=torch.Generator().manual_seed(11))
    cache = KVCache()
    cache.window_slack = slack
    with torch.no_grad():
        net(ids[:, :12], cache=cache, input_not_include_cache=True)
        assert [layer.k.shape[-2] for layer in cache.layers] == [4 + slack] * 2
        with pytest.raises(ValueError, match=f"keeps only its last {4 + slack} keys"):
            cache.truncate(12 - slack - 2)
        cache.truncate(12 - slack - 1)
        got = net(ids[:, 12 - slack - 1 : 14], cache=cache, input_not_include_cache=True)
        expected = net(ids[:, :14])[:, 12 - slack - 1 :]
    assert (got - expected).abs().max().item() < 1e-5


def test_compiled_and_lean_paths_decline():
    net = model(attn_sliding_window=4)
    assert unsupported(net, {}) == "attn_sliding_window"
    assert attach(net.attn_layers, KVCache()) is False
    assert attach(model().attn_layers, KVCache()) is True  # the same model without a window


# ------------------------------------------------------------------ per-layer windows


def test_per_layer_windows_repeat_over_the_self_attention_layers():
    def stack(window, depth):
        return Decoder(dim=16, depth=depth, heads=2, attn_sliding_window=window)

    def own(s):
        return [b.branch.sliding_window for b in s.layers if b.layer_type == "a"]

    assert own(stack((8, None), 4)) == [8, None, 8, None]  # Gemma 2
    assert own(stack([4, 4, None], 4)) == [4, 4, None, 4]  # Gemma 3's 5:1, shortened
    assert own(stack(8, 2)) == [8, 8]  # Mistral
    s = stack((8, None), 2)
    assert s.config.attention.sliding_window == (8, None)
    paths = s.attention_paths()
    assert paths[0]["sliding_window"] == 8 and paths[0]["kv_cache_keys"] == 8
    assert "sliding_window" not in paths[1]


def test_per_layer_windows_equal_per_layer_masks():
    """Layer 0 local (3), layer 1 global: the masked reference with max_attend_past on layer 0
    only (the quadratic path through a per-layer config)."""
    sliding = model(attn_sliding_window=(3, None))
    local = same_weights(sliding, attn_sliding_window=3)
    full = same_weights(sliding)
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        got = sliding(ids)
        assert (got - local(ids)).abs().max().item() > 1e-3  # layer 1 is global
        assert (got - full(ids)).abs().max().item() > 1e-3  # layer 0 is local
    assert windows(sliding) == [3, None]


def test_config_round_trip_keeps_per_layer_windows():
    net = model(attn_sliding_window=(3, None))
    rebuilt = TransformerWrapper.from_config(json.loads(json.dumps(net.config_dict())))
    assert windows(rebuilt) == [3, None]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0, ValueError, "attn_sliding_window windows must be >= 1"),
        ((4, -1), ValueError, "attn_sliding_window windows must be >= 1"),
        ((), ValueError, "attn_sliding_window must not be an empty tuple"),
        (2.5, TypeError, "attn_sliding_window must be int | tuple"),
        ("4", TypeError, "attn_sliding_window must be int | tuple"),
    ],
)
def test_bad_values_raise(value, error, message):
    with pytest.raises(error, match=message):
        Decoder(dim=16, depth=2, heads=2, attn_sliding_window=value)


def test_bad_combinations_raise():
    with pytest.raises(ValueError, match="attn_sliding_window or attn_max_attend_past"):
        Decoder(dim=16, depth=1, heads=2, attn_sliding_window=4, attn_max_attend_past=3)
    with pytest.raises(ValueError, match="needs causal self-attention"):
        Encoder(dim=16, depth=1, heads=2, attn_sliding_window=4)
    with pytest.raises(ValueError, match="3 per-layer windows, but the stack has 2"):
        Decoder(dim=16, depth=2, heads=2, attn_sliding_window=(4, None, 4))
    with pytest.raises(ValueError, match="which a stack resolves"):
        Attention(16, heads=2, causal=True, sliding_window=(4, None))
    with pytest.raises(ValueError, match="needs causal self-attention"):
        Attention(16, heads=2, sliding_window=4)


def test_cross_attention_has_no_window():
    """attn_* options reach cross-attention too; the window stays on self-attention."""
    stack = Decoder(dim=16, depth=1, heads=2, cross_attend=True, attn_sliding_window=4)
    kinds = [(b.layer_type, b.branch.sliding_window) for b in stack.layers if b.layer_type != "f"]
    assert kinds == [("a", 4), ("c", None)]


# ------------------------------------------------------------------ Hugging Face Mistral


def tiny_mistral(window):
    transformers = pytest.importorskip("transformers")
    config = transformers.MistralConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=256,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=0.1,
        sliding_window=window,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.MistralForCausalLM(config).eval()


def ours_from_mistral(hf, window):
    """Mistral is Llama plus the window: the Llama converter's model, rebuilt with it."""
    transformers = pytest.importorskip("transformers")
    from anyformer.convert import from_hf

    llama_config = transformers.LlamaConfig(**hf.config.to_dict())
    llama = transformers.LlamaForCausalLM(llama_config).eval()
    llama.load_state_dict(hf.state_dict())
    converted = from_hf(llama)
    config = json.loads(json.dumps(converted.config_dict()))
    config["attn_layers"]["attention"]["sliding_window"] = window
    ours = TransformerWrapper.from_config(config).eval()
    ours.load_state_dict(converted.state_dict())
    return ours


@pytest.mark.parametrize("length", [12, 160])  # masked, then blockwise
def test_hugging_face_mistral_logits(length):
    hf = tiny_mistral(4)
    ours = ours_from_mistral(hf, 4)
    ids = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert (got - expected).abs().max().item() < 1e-4


def test_hugging_face_mistral_greedy_past_the_window():
    hf = tiny_mistral(4)
    ours = ours_from_mistral(hf, 4)
    prompt = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        expected = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, min_new_tokens=16,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        )[:, 6:]  # fmt: skip
    got = AutoregressiveWrapper(ours).generate(prompt, 16, temperature=0.0)
    assert torch.equal(got, expected)
