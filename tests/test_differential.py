"""Differential attention (DIFF Transformer, 2410.05258): a float64 hand computation from the
paper, lambda_init per depth, cached == uncached, causality, fused == explicit, errors."""

from __future__ import annotations

import math

import pytest
import torch

import anyformer as af

torch.set_num_threads(1)


def _softmax_causal(s: torch.Tensor) -> torch.Tensor:
    n = s.shape[-1]
    return s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf).softmax(-1)


def test_by_hand_float64() -> None:
    torch.manual_seed(0)
    dim, heads, d, dv, layer = 10, 2, 3, 6, 3
    attn = af.Attention(dim, heads=heads, causal=True, dim_head=d, differential=True, layer=layer)
    attn = attn.double()
    with torch.no_grad():
        attn.differential.gain.normal_()
    x = torch.randn(1, 5, dim, dtype=torch.float64)
    w = attn.qkv.to_qkv.weight  # rows: q (h * 2d), k (h * 2d), v (h * dv)
    q_all, k_all, v_all = (x[0] @ w[a:b].T for a, b in ((0, 12), (12, 24), (24, 36)))
    lam_init = 0.8 - 0.6 * math.exp(-0.3 * (layer - 1))
    p = attn.differential
    lam = (
        math.exp(float(p.lambda_q1 @ p.lambda_k1))
        - math.exp(float(p.lambda_q2 @ p.lambda_k2))
        + lam_init
    )
    heads_out = []
    for h in range(heads):
        q, k, v = (
            q_all[:, 6 * h : 6 * h + 6],
            k_all[:, 6 * h : 6 * h + 6],
            v_all[:, 6 * h : 6 * h + 6],
        )
        a1 = _softmax_causal(q[:, :d] @ k[:, :d].T / math.sqrt(d))
        a2 = _softmax_causal(q[:, d:] @ k[:, d:].T / math.sqrt(d))
        o = (a1 - lam * a2) @ v
        o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * p.gain
        heads_out.append((1 - lam_init) * o)
    expect = torch.cat(heads_out, -1) @ attn.to_out.weight.T
    assert attn.value_dim == dv
    assert (attn(x)[0] - expect).abs().max().item() <= 1e-12


def test_lambda_init_per_depth() -> None:
    stack = af.Decoder(dim=16, depth=4, heads=2, attn_dim_head=4, attn_differential=True)
    inits = [m.differential.lambda_init for m in stack.modules() if isinstance(m, af.Attention)]
    assert inits == pytest.approx(
        [0.8 - 0.6 * math.exp(-0.3 * (depth - 1)) for depth in range(1, 5)]
    )


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(1)
    stack = af.Decoder(dim=32, depth=2, heads=4, attn_dim_head=4, attn_differential=True, **kw)
    return af.TransformerWrapper(num_tokens=64, max_seq_len=0, attn_layers=stack).eval()


VARIANTS = {
    "rotary_gqa": dict(rotary_pos_emb=True, attn_kv_heads=2),
    "alibi": dict(alibi_pos_bias=True),
    "window_xpos": dict(rotary_xpos=True, attn_sliding_window=3),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_equals_uncached_and_causal(name: str) -> None:
    model = _model(**VARIANTS[name])
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, cache, steps = model(x), None, []
        for i in range(x.shape[1]):
            out, inter = model(
                x[:, i : i + 1],
                cache=cache,
                return_intermediates=True,
                input_not_include_cache=True,
            )
            cache, steps = inter.cache, [*steps, out]
        assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-5
        y = x.clone()
        y[:, 5:] = (y[:, 5:] + 1) % 64
        assert (model(y)[:, :5] - full[:, :5]).abs().max().item() <= 1e-6


def test_fused_equals_explicit_and_paths() -> None:
    fused = _model(rotary_pos_emb=True)
    explicit = _model(rotary_pos_emb=True, attn_kernel="explicit")
    explicit.load_state_dict(fused.state_dict())
    assert fused.attn_layers.attention_paths()[0]["path"] == "fused"
    x = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (fused(x) - explicit(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("other", ["attn_qk_norm", "attn_head_learned_sink", "attn_talking_heads"])
def test_clashing_options(other: str) -> None:
    with pytest.raises(ValueError, match=f"differential=True cannot be combined with {other}"):
        af.Decoder(dim=16, depth=1, attn_differential=True, **{other: True})


def test_residual_attention_clash() -> None:
    with pytest.raises(ValueError, match="two attention maps per head"):
        af.Decoder(dim=16, depth=1, attn_differential=True, residual_attn=True)
