"""ALiBi's later forms (x-transformers 2.x names): data-dependent ALiBi (the Forgetting
Transformer's forget gate, attn_data_dependent_alibi) and custom ALiBi positions per head."""

from __future__ import annotations

import math

import pytest
import torch
from xt2_models import TOL, max_logit_diff, pair, tokens

import anyformer as af
from anyformer import KVCache
from anyformer.nn.positions.data_dependent_alibi import (
    DataDependentAlibi,
    PerRowDataDependentAlibi,
)

torch.set_num_threads(1)

V = 64
DDA = dict(attn_data_dependent_alibi=True)
PER_ROW = dict(attn_data_dependent_alibi_per_row=True)
#: the two forms of the gate, for the decoding tests
FORMS = pytest.mark.parametrize("form", [{}, PER_ROW], ids=["per_token", "per_row"])


def dda_net(seed: int = 0, **kwargs) -> af.TransformerWrapper:
    torch.manual_seed(seed)
    layers = af.Decoder(dim=32, depth=2, heads=2, attn_dim_head=16, **{**DDA, **kwargs})
    net = af.TransformerWrapper(num_tokens=V, max_seq_len=0, attn_layers=layers).eval()
    with torch.no_grad():  # gates well below 1, so the bias matters
        for m in net.modules():
            if isinstance(m, DataDependentAlibi):
                m.to_forget_gates.bias.normal_(0.0, 1.0)
    return net


# --------------------------------------------------------------------------- oracle


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(heads=4, attn_kv_heads=2, attn_num_mem_kv=2),
        dict(heads=4, attn_one_kv_head=True),
        dict(attn_data_dependent_alibi_kwargs=dict(bias_init=1.0, post_log_scale=3.0)),
        dict(rotary_pos_emb=True),
        PER_ROW,
        dict(
            heads=4,
            attn_kv_heads=2,
            attn_num_mem_kv=1,
            attn_data_dependent_alibi_per_row_dim_head=4,
            attn_data_dependent_alibi_kwargs=dict(post_log_scale=2.0),
            **PER_ROW,
        ),
    ],
)
def test_data_dependent_alibi_matches_x_transformers_2(kw):
    ours, theirs = pair("Decoder", {**DDA, **kw})
    assert max_logit_diff(ours, theirs, tokens()) <= TOL


# --------------------------------------------------------------------------- the bias itself


def reference_bias(x, weight, bias, scale=1.0):
    """float64, one (i, j) at a time: sum over j < s <= i of scale * log sigmoid(w . x_s + b)."""
    logf = torch.log(torch.sigmoid(x.double() @ weight.double().T + bias.double())) * scale
    b, n, h = logf.shape
    out = torch.zeros(b, h, n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1):
            out[:, :, i, j] = logf[:, j + 1 : i + 1].sum(1)
    return out


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_data_dependent_bias_equals_hand_computation(scale):
    torch.manual_seed(0)
    m = DataDependentAlibi(8, 3, bias_init=0.5, post_log_scale=scale).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    got = m(x)
    want = reference_bias(x, m.to_forget_gates.weight, m.to_forget_gates.bias, scale)
    keep = torch.ones(7, 7, dtype=torch.bool).tril()  # above the diagonal: masked by causality
    torch.testing.assert_close(got[..., keep], want[..., keep], rtol=1e-12, atol=1e-12)
    assert (got[..., keep] <= 1e-12).all()  # a forget gate only ever lowers a logit


def reference_per_row_bias(x, weight, heads, d, scale=1.0):
    """float64: f_is = scale * log sigmoid(q_i . k_s / sqrt(d)), bias_ij = sum_{j <= s < i} f_is."""
    q, k = (x.double() @ weight.double().T).view(*x.shape[:2], 2, heads, d).unbind(2)
    b, n = x.shape[:2]
    out = torch.zeros(b, heads, n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1):
            for s_ in range(j, i):
                logit = (q[:, i] * k[:, s_]).sum(-1) / math.sqrt(d)
                out[:, :, i, j] += scale * torch.log(torch.sigmoid(logit))
    return out


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_per_row_bias_equals_hand_computation(scale):
    torch.manual_seed(1)
    m = PerRowDataDependentAlibi(8, 3, dim_head=4, post_log_scale=scale).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    got = m(x)
    want = reference_per_row_bias(x, m.to_forget_gates.weight, 3, 4, scale)
    keep = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(got[..., keep], want[..., keep], rtol=1e-12, atol=1e-12)


def test_gate_bias_starts_at_bias_init():
    net = af.Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, **DDA)
    gates = [m for m in net.modules() if isinstance(m, DataDependentAlibi)]
    assert len(gates) == 1
    assert torch.equal(gates[0].to_forget_gates.bias, torch.full((2,), 5.0))


# --------------------------------------------------------------------------- decoding


@FORMS
def test_cached_chunks_equal_uncached(form):
    net = dda_net(1, **form)
    x = tokens(3, 11, seed=2)
    full = net(x)
    cache = KVCache(capacity=4)  # grows past its capacity
    outs = [
        net(x[:, a:b], cache=cache, input_not_include_cache=True)
        for a, b in ((0, 4), (4, 5), (5, 8), (8, 11))
    ]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-5, atol=1e-5)


@FORMS
def test_cached_with_key_padding_mask_equals_uncached(form):
    net = dda_net(2, **form)
    x = tokens(2, 9, seed=3)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 2:4] = False
    full = net(x, mask=mask)
    cache = KVCache()
    first = net(x[:, :5], mask=mask[:, :5], cache=cache)
    rest = net(x, mask=mask, cache=cache)
    torch.testing.assert_close(torch.cat((first, rest), 1), full, rtol=1e-5, atol=1e-5)


@FORMS
def test_greedy_generation_cached_equals_uncached(form):
    net = dda_net(3, **form)
    wrapper = af.AutoregressiveWrapper(net)
    prompt = tokens(2, 4, seed=4)
    a = wrapper.generate(prompt, 6, temperature=0.0, cache_kv=True)
    b = wrapper.generate(prompt, 6, temperature=0.0, cache_kv=False)
    assert torch.equal(a, b)


@FORMS
def test_cache_reorder_and_truncate_carry_the_running_sums(form):
    net = dda_net(4, **form)
    x = tokens(2, 8, seed=5)
    cache = KVCache()
    net(x[:, :6], cache=cache)
    cache.reorder(torch.tensor([1, 0]))  # beam search: the rows swap
    step = net(x.flip(0)[:, :7], cache=cache)
    torch.testing.assert_close(step[:, -1], net(x.flip(0)[:, :7])[:, -1], rtol=1e-5, atol=1e-5)
    cache.truncate(4)  # speculative decoding's rollback
    again = net(x.flip(0), cache=cache)
    torch.testing.assert_close(again, net(x.flip(0))[:, 4:], rtol=1e-5, atol=1e-5)


@FORMS
def test_causal(form):
    net = dda_net(5, **form)
    x = tokens(1, 10, seed=6)
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % V
    a, b = net(x), net(y)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_attention_paths_report_fused_and_cached():
    net = dda_net(6)
    paths = net.attn_layers.attention_paths()
    assert [(p["path"], p["kv_cache"]) for p in paths] == [("fused", True)] * 2
    assert net.capabilities()["fused_attention"] is True


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kind, kw, error, words",
    [
        ("Encoder", DDA, ValueError, "data_dependent_alibi=True"),
        ("Decoder", {**DDA, "alibi_pos_bias": True}, ValueError, "alibi_pos_bias"),
        ("Decoder", {**DDA, "rel_pos_bias": True}, ValueError, "attn_data_dependent_alibi"),
        ("Decoder", {**DDA, "attn_sliding_window": 4}, ValueError, "attn_sliding_window"),
        (
            "Decoder",
            {"attn_data_dependent_alibi_kwargs": {"bias_init": 1.0}},
            ValueError,
            "attn_data_dependent_alibi_kwargs was set",
        ),
        (
            "Decoder",
            {**DDA, "attn_data_dependent_alibi_kwargs": {"slope": 1.0}},
            ValueError,
            "'slope'",
        ),
        (
            "Decoder",
            {**DDA, "attn_data_dependent_alibi_kwargs": {"bias_init": "5"}},
            TypeError,
            "bias_init",
        ),
        (
            "Decoder",
            {**DDA, "attn_data_dependent_alibi_kwargs": {"post_log_scale": float("nan")}},
            ValueError,
            "post_log_scale",
        ),
        (
            "Decoder",
            PER_ROW,
            ValueError,
            "attn_data_dependent_alibi_per_row=True needs attn_data_dependent_alibi=True",
        ),
        (
            "Decoder",
            {**DDA, **PER_ROW, "attn_data_dependent_alibi_kwargs": {"bias_init": 1.0}},
            ValueError,
            "'bias_init'",
        ),
        (
            "Decoder",
            {**DDA, **PER_ROW, "attn_data_dependent_alibi_per_row_dim_head": 0},
            ValueError,
            "attn_data_dependent_alibi_per_row_dim_head must be >= 1",
        ),
    ],
)
def test_errors_name_the_keyword(kind, kw, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[")):
        getattr(af, kind)(dim=16, depth=1, heads=2, attn_dim_head=8, **kw)


# --------------------------------------------------------------------------- per-head positions


def head_positions(b: int, heads: int, n: int, seed: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (b, heads, n), generator=gen)


@pytest.mark.parametrize("kind", ["Decoder", "Encoder"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(heads=4),
        dict(heads=4, alibi_num_heads=3, attn_kv_heads=2),
        dict(heads=3, alibi_num_heads=2),
    ],
)
def test_alibi_positions_per_head_match_x_transformers_2(kind, kw):
    ours, theirs = pair(kind, dict(alibi_pos_bias=True, **kw), dict(use_abs_pos_emb=False))
    pos = head_positions(2, kw.get("alibi_num_heads", kw["heads"]), 12)
    assert max_logit_diff(ours, theirs, tokens(), pos=pos) <= TOL


def test_alibi_positions_per_head_equal_hand_computation():
    """Each head's bias is -slope_h * |pos[h, j] - pos[h, i]| (float64, from the paper's slopes)."""
    from anyformer.nn.positions import AlibiPositionalBias, alibi_slopes

    alibi = AlibiPositionalBias(3, total_heads=4)
    pos = head_positions(2, 3, 5).double()
    got = alibi(pos, pos)
    slopes = alibi_slopes(3)
    for h in range(4):
        for i in range(5):
            for j in range(5):
                want = (
                    -slopes[h] * (pos[:, h, j] - pos[:, h, i]).abs() if h < 3 else 0 * pos[:, 0, 0]
                )
                torch.testing.assert_close(got[:, h, i, j].double(), want, rtol=1e-6, atol=1e-6)


def test_same_positions_on_every_head_equal_shared_positions():
    torch.manual_seed(0)
    net = af.TransformerWrapper(
        num_tokens=V, max_seq_len=0,
        attn_layers=af.Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, alibi_pos_bias=True),
    ).eval()  # fmt: skip
    x, pos = tokens(2, 6), head_positions(2, 1, 6)[:, 0]
    torch.testing.assert_close(net(x, pos=pos.unsqueeze(1).expand(2, 2, 6)), net(x, pos=pos))


@pytest.mark.parametrize(
    "stack_kw, wrapper_kw, call_kw, words",
    [
        (dict(rel_pos_bias=True), {}, {}, "needs alibi_pos_bias=True"),
        (dict(alibi_pos_bias=True, alibi_num_heads=1), {}, {}, r"alibi_num_heads=1"),
        (dict(alibi_pos_bias=True, rotary_pos_emb=True), {}, {}, "rotary positions"),
        (dict(alibi_pos_bias=True), dict(max_seq_len=16), {}, "absolute positions"),
        (dict(alibi_pos_bias=True), dict(num_memory_tokens=2), {}, "memory tokens"),
        (dict(alibi_pos_bias=True), {}, dict(cache=True), "a KV cache"),
        (dict(alibi_pos_bias=True), {}, dict(seq_start_pos=torch.tensor([0, 1])), "seq_start_pos"),
        (
            dict(alibi_pos_bias=True),
            {},
            dict(prepend_embeds=torch.zeros(2, 1, 16)),
            "prepend_embeds",
        ),
    ],
)
def test_positions_per_head_errors(stack_kw, wrapper_kw, call_kw, words):
    layers = af.Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, **stack_kw)
    net = af.TransformerWrapper(
        num_tokens=V, **{"max_seq_len": 0, **wrapper_kw}, attn_layers=layers
    )
    if call_kw.get("cache"):
        call_kw = dict(cache=KVCache())
    with pytest.raises(ValueError, match=words):
        net(tokens(2, 6), pos=head_positions(2, 2, 6), **call_kw)
