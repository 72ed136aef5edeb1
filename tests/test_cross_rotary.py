"""Rotary cross-attention (x-transformers 2.x's forward ``context_pos``): queries rotate to the
rows' positions, the context's keys to ``context_pos``."""

from __future__ import annotations

import math

import pytest
import torch
from xt2_models import TOL, max_logit_diff, pair, tokens

import anyformer as af
from anyformer import KVCache
from anyformer.nn.positions.rotary import CrossRotary

torch.set_num_threads(1)

V = 64
CROSS = dict(cross_attend=True, rotary_pos_emb=True)


def context(b: int = 2, m: int = 5, dim: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randn(b, m, dim, generator=torch.Generator().manual_seed(seed))


def context_positions(b: int = 2, m: int = 5, seed: int = 4) -> torch.Tensor:
    return torch.randint(0, 30, (b, m), generator=torch.Generator().manual_seed(seed))


def net(seed: int = 0, **kw) -> af.TransformerWrapper:
    torch.manual_seed(seed)
    layers = af.Decoder(dim=32, depth=2, heads=2, attn_dim_head=16, **{**CROSS, **kw})
    return af.TransformerWrapper(num_tokens=V, max_seq_len=0, attn_layers=layers).eval()


@pytest.mark.parametrize(
    "kw, shared",
    [
        ({}, False),
        ({}, True),
        (dict(heads=4, attn_kv_heads=2, cross_attn_kv_heads=2), False),
        (dict(cross_attn_dim_context=24), False),
        (dict(rotary_emb_dim=8, cross_attn_qk_norm=True), False),
    ],
)
def test_cross_rotary_matches_x_transformers_2(kw, shared):
    ours, theirs = pair("Decoder", {**CROSS, **kw})
    ctx = context(dim=kw.get("cross_attn_dim_context", 32))
    pos = context_positions()
    pos = pos[0] if shared else pos
    assert max_logit_diff(ours, theirs, tokens(), context=ctx, context_pos=pos) <= TOL
    # custom query positions too
    q_pos = torch.arange(12) + 7
    diff = max_logit_diff(ours, theirs, tokens(), context=ctx, context_pos=pos, pos=q_pos)
    assert diff <= TOL


def test_cross_rotary_logits_equal_hand_computation():
    """One cross-attention layer in float64: softmax(R(i) q_i . R(c_j) k_j / sqrt(d)) v, with R
    the paper's rotation of the pairs (t, t + r/2) by angle p * theta^(-2t/r)."""
    torch.manual_seed(0)
    layers = af.Decoder(
        dim=8, depth=1, heads=1, attn_dim_head=8, only_cross=True, rotary_emb_dim=4,
        ff_mult=1, **CROSS,
    ).double().eval()  # fmt: skip
    attn = layers.layers[0].branch  # only_cross: one cross-attention block
    x, ctx = torch.randn(1, 3, 8).double(), torch.randn(1, 4, 8).double()
    q_pos, c_pos = torch.tensor([2, 5, 6]), torch.tensor([0, 3, 9, 4])
    rotary = layers.rotary
    rotation = CrossRotary(rotary.angles(q_pos[None]), rotary.angles(c_pos[None]))
    got = attn(x, context=ctx, positions=rotation)

    w_q, w_k, w_v = attn.qkv.to_qkv.weight.split(8)
    q, k, v = x[0] @ w_q.T, ctx[0] @ w_k.T, ctx[0] @ w_v.T

    def rotate(t, p):
        out = t.clone()
        for t_i in range(2):
            angle = p * 10000.0 ** (-2 * t_i / 4)
            a, b = t[t_i], t[t_i + 2]
            out[t_i] = a * math.cos(angle) - b * math.sin(angle)
            out[t_i + 2] = b * math.cos(angle) + a * math.sin(angle)
        return out

    logits = torch.stack(
        [
            torch.stack([rotate(q[i], q_pos[i]) @ rotate(k[j], c_pos[j]) for j in range(4)])
            for i in range(3)
        ]
    ) / math.sqrt(8)
    want = (logits.softmax(-1) @ v) @ attn.to_out.weight.T
    # the rotary tables are float32 (the angles' precision), the rest float64
    torch.testing.assert_close(got[0], want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(attn(x, context=ctx), got)  # the rotation matters


def test_shifting_both_positions_keeps_the_logits():
    """Rotary attention depends only on the offsets: shifting query and context positions by
    the same amount changes nothing; shifting only the context's does."""
    model, ctx, c_pos = net(1), context(), context_positions()
    x = tokens()
    base = model(x, context=ctx, context_pos=c_pos)
    shifted = model(x, context=ctx, context_pos=c_pos + 9, pos=torch.arange(12) + 9)
    torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(model(x, context=ctx, context_pos=c_pos + 9), base, atol=1e-3)


def test_cached_decoding_equals_uncached():
    model, ctx, c_pos = net(2), context(), context_positions()
    x = tokens(2, 10)
    full = model(x, context=ctx, context_pos=c_pos)
    cache = KVCache()
    first = model(x[:, :4], context=ctx, context_pos=c_pos, cache=cache)
    step = model(
        x[:, 4:5], context=ctx, context_pos=c_pos, cache=cache, input_not_include_cache=True
    )
    rest = model(x[:, 5:], context=ctx, cache=cache, input_not_include_cache=True)  # keys cached
    torch.testing.assert_close(torch.cat((first, step, rest), 1), full, rtol=1e-5, atol=1e-5)


def test_greedy_generation_cached_equals_uncached():
    wrapper = af.AutoregressiveWrapper(net(3))
    kw = dict(context=context(), context_pos=context_positions(), temperature=0.0)
    prompt = tokens(2, 3)
    a = wrapper.generate(prompt, 5, cache_kv=True, **kw)
    b = wrapper.generate(prompt, 5, cache_kv=False, **kw)
    assert torch.equal(a, b)


def test_causal():
    model, ctx, c_pos = net(4), context(), context_positions()
    x = tokens(1, 10)
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % V
    a = model(x, context=ctx[:1], context_pos=c_pos[:1])
    b = model(y, context=ctx[:1], context_pos=c_pos[:1])
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_attention_paths_stay_fused():
    paths = net(5).attn_layers.attention_paths()
    assert [(p["type"], p["path"], p["kv_cache"]) for p in paths] == [
        ("a", "fused", True), ("c", "fused", True)
    ] * 2  # fmt: skip


@pytest.mark.parametrize(
    "stack_kw, call_kw, words",
    [
        (dict(rotary_pos_emb=False), {}, "rotary_pos_emb=True"),
        (dict(rotary_xpos=True), {}, "rotary_xpos"),
        ({}, dict(context_pos=torch.arange(4)), r"shape \(5,\) or \(batch, 5\)"),
        ({}, dict(context_pos=torch.ones(2, 5, dtype=torch.bool)), "real tensor"),
    ],
)
def test_errors_name_the_keyword(stack_kw, call_kw, words):
    model = net(6, **stack_kw)
    kw = {"context_pos": context_positions(), **call_kw}
    with pytest.raises(ValueError, match=words):
        model(tokens(), context=context(), **kw)


def test_context_pos_without_cross_attention():
    torch.manual_seed(0)
    layers = af.Decoder(dim=32, depth=1, heads=2, attn_dim_head=16, rotary_pos_emb=True)
    model = af.TransformerWrapper(num_tokens=V, max_seq_len=0, attn_layers=layers)
    with pytest.raises(ValueError, match="context_pos was given but this Decoder has no cross"):
        model(tokens(), context_pos=context_positions())


def test_context_pos_only_after_the_first_cached_call():
    model, ctx = net(7), context()
    cache = KVCache()
    model(tokens(2, 4), context=ctx, cache=cache)
    with pytest.raises(ValueError, match="context_pos must be given on the cache's first call"):
        model(tokens(2, 5), context=ctx, context_pos=context_positions(), cache=cache)
