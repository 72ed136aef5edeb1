"""QK-clip (MuonClip, Kimi K2 2507.20534): x-transformers 2.x's attn_qk_clip_ from the same
weights, and by hand: after the clip, each head's largest logit on the same input is
min(its old largest, tau), and heads below tau are untouched."""

from __future__ import annotations

import pytest
import torch
from xt2 import xt2
from xt2_models import TOL, max_logit_diff, pair, tokens

import anyformer as af

torch.set_num_threads(1)


def _inter(model: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        _, inter = model(x, return_intermediates=True, return_attn=True)
    return inter


def _their_clip_by_rows(theirs: torch.nn.Module, inter, tau: float) -> None:
    """x-transformers 2.31.10's qk_clip_ rule (scale sqrt(min(tau / max_h, 1)) per head) applied
    to the rows (output features) of to_q / to_k. Its own qk_clip_ multiplies the weight
    (out, in) by a vector of length out, which broadcasts over the input columns instead."""
    X = xt2()
    attn_cls = X._anyformer_submodules["x_transformers.x_transformers"].Attention
    attns = [m for m in theirs.modules() if isinstance(m, attn_cls)]
    with torch.no_grad():
        for attn, i in zip(attns, inter.attn_intermediates, strict=True):
            maxes = i.pre_softmax_attn.amax(dim=(0, 2, 3))
            scale = (tau / maxes).clamp(max=1.0).sqrt()
            rows = scale.repeat_interleave(attn.to_q.weight.shape[0] // scale.numel())
            attn.to_q.weight.mul_(rows[:, None])
            attn.to_k.weight.mul_(rows[:, None])


@pytest.mark.parametrize("kw", [dict(), dict(rotary_pos_emb=True)])
def test_equals_x_transformers_2_rule(kw: dict) -> None:
    ours, theirs = pair("Decoder", kw, scale=0.5)
    x = tokens()
    with torch.no_grad():
        _, their_inter = theirs(x, return_intermediates=True)
    tau = float(min(i.pre_softmax_attn.amax() for i in their_inter.attn_intermediates)) * 0.5
    _their_clip_by_rows(theirs, their_inter, tau)  # every layer clips some head
    ours.attn_qk_clip_(_inter(ours, x), tau=tau)
    assert max_logit_diff(ours, theirs, x) <= TOL
    assert max_logit_diff(ours, theirs, tokens(seed=5)) <= TOL


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_head_maxima_become_tau(kv_heads: int) -> None:
    torch.manual_seed(0)
    stack = af.Decoder(
        dim=32, depth=1, heads=4, attn_dim_head=8, attn_kv_heads=kv_heads, rotary_pos_emb=True,
        attn_qkv_bias=True,
    )  # fmt: skip
    model = af.TransformerWrapper(num_tokens=64, max_seq_len=0, attn_layers=stack).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    x = tokens()
    before = _inter(model, x).attn_intermediates[0].pre_softmax_attn.amax(dim=(0, 2, 3))
    tau = float(before.sort().values[1])  # two heads above tau (at most), two at or below
    model.attn_qk_clip_(_inter(model, x), tau=tau)
    after = _inter(model, x).attn_intermediates[0].pre_softmax_attn.amax(dim=(0, 2, 3))
    assert torch.allclose(after, before.clamp(max=tau), rtol=1e-5, atol=1e-5)


def test_errors() -> None:
    model = af.TransformerWrapper(
        num_tokens=8, max_seq_len=0, attn_layers=af.Decoder(dim=16, depth=2, attn_qk_norm=True)
    )
    x = torch.randint(0, 8, (1, 4))
    with pytest.raises(ValueError, match="qk_norm"):
        model.attn_qk_clip_(_inter(model, x), tau=1.0)
    plain = af.TransformerWrapper(
        num_tokens=8, max_seq_len=0, attn_layers=af.Decoder(dim=16, depth=2)
    )
    with torch.no_grad():
        _, inter = plain(x, return_intermediates=True)
    inter.attn_intermediates = inter.attn_intermediates[:1]
    with pytest.raises(ValueError, match="1 attention intermediates for 2 attention executions"):
        plain.attn_qk_clip_(inter, tau=1.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        plain.attn_qk_clip_(_inter(plain, x), tau=0.0)
