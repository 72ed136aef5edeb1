"""The options real checkpoints need (attention biases, ff_inner_dim, ff_gelu_tanh, the
post-embedding LayerNorm's bias and eps), each against a float64 computation by hand."""

from __future__ import annotations

import math

import pytest
import torch

from anyformer import Attention, Decoder, Encoder, FeedForward, TransformerWrapper


def _attention_by_hand(x, ctx, wq, bq, wk, bk, wv, bv, wo, bo, heads):
    """softmax(q k^T / sqrt(d)) v with every projection's bias, in float64."""
    q, k, v = x @ wq.T + bq, ctx @ wk.T + bk, ctx @ wv.T + bv
    b, n, inner = q.shape
    d = inner // heads

    def split(t):
        return t.view(b, t.shape[1], heads, d).transpose(1, 2)

    att = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)).softmax(-1)
    out = (att @ split(v)).transpose(1, 2).reshape(b, n, inner)
    return out @ wo.T + bo


def _randomise(module):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


@pytest.mark.parametrize("dim_context", [None, 12], ids=["fused-qkv", "split-qkv"])
def test_attention_projection_biases(dim_context):
    attn = Attention(16, heads=2, dim_head=8, qkv_bias=True, out_bias=True, dim_context=dim_context)
    attn = _randomise(attn).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    if dim_context is None:
        w, b = attn.qkv.to_qkv.weight, attn.qkv.to_qkv.bias
        (wq, wk, wv), (bq, bk, bv) = w.split(16), b.split(16)
        ctx = x
        got = attn(x)
    else:
        wq, bq = attn.qkv.to_q.weight, attn.qkv.to_q.bias
        (wk, wv), (bk, bv) = attn.qkv.to_kv.weight.split(16), attn.qkv.to_kv.bias.split(16)
        ctx = torch.randn(2, 7, 12, dtype=torch.float64)
        got = attn(x, context=ctx)
    wo, bo = attn.to_out.weight, attn.to_out.bias
    expected = _attention_by_hand(x, ctx, wq, bq, wk, bk, wv, bv, wo, bo, heads=2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_cross_attention_of_the_same_width_slices_the_biases():
    """A context as wide as x goes through the fused projection's key/value slice and its bias."""
    attn = _randomise(Attention(16, heads=2, dim_head=8, qkv_bias=True)).double().eval()
    x, ctx = torch.randn(1, 3, 16, dtype=torch.float64), torch.randn(1, 4, 16, dtype=torch.float64)
    w, b = attn.qkv.to_qkv.weight, attn.qkv.to_qkv.bias
    (wq, wk, wv), (bq, bk, bv) = w.split(16), b.split(16)
    wo = attn.to_out.weight
    expected = _attention_by_hand(x, ctx, wq, bq, wk, bk, wv, bv, wo, 0.0, heads=2)
    torch.testing.assert_close(attn(x, context=ctx), expected, rtol=0, atol=1e-10)


def test_attention_biases_start_at_zero_and_are_absent_by_default():
    attn = Attention(16, heads=2, dim_head=8, qkv_bias=True, out_bias=True)
    assert torch.count_nonzero(attn.qkv.to_qkv.bias) == 0 and attn.qkv.to_qkv.bias.shape == (48,)
    assert torch.count_nonzero(attn.to_out.bias) == 0 and attn.to_out.bias.shape == (16,)
    plain = Attention(16, heads=2, dim_head=8)
    assert plain.qkv.to_qkv.bias is None and plain.to_out.bias is None
    names = dict(Decoder(dim=16, depth=1, heads=2, attn_qkv_bias=True).named_parameters())
    assert "layers.0.branch.qkv.to_qkv.bias" in names
    assert "layers.0.branch.to_out.bias" not in names  # out_bias is its own option


def test_gelu_tanh_approximation():
    ff = _randomise(FeedForward(8, inner_dim=12, gelu_tanh=True)).double()
    x = torch.randn(4, 8, dtype=torch.float64)
    h = x @ ff.proj_in.weight.T + ff.proj_in.bias
    c = math.sqrt(2 / math.pi)
    act = 0.5 * h * (1 + torch.tanh(c * (h + 0.044715 * h**3)))  # GPT-2's gelu_new
    expected = act @ ff.proj_out.weight.T + ff.proj_out.bias
    torch.testing.assert_close(ff(x), expected, rtol=0, atol=1e-12)
    exact = _randomise(FeedForward(8, inner_dim=12)).double()
    h = x @ exact.proj_in.weight.T + exact.proj_in.bias
    erf = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    torch.testing.assert_close(
        exact(x), erf @ exact.proj_out.weight.T + exact.proj_out.bias, rtol=0, atol=1e-12
    )


def test_inner_dim_overrides_mult():
    ff = FeedForward(8, mult=4, inner_dim=12)
    assert ff.proj_in.weight.shape == (12, 8) and ff.proj_out.weight.shape == (8, 12)
    glu = FeedForward(8, inner_dim=12, glu=True)
    assert glu.proj_in.weight.shape == (24, 8)  # value and gate halves
    stack = Decoder(dim=8, depth=1, heads=2, ff_inner_dim=20)
    assert stack.layers[1].branch.proj_out.weight.shape == (8, 20)


def test_post_embedding_layernorm_bias_and_eps():
    model = TransformerWrapper(
        num_tokens=11,
        max_seq_len=6,
        post_emb_norm=True,
        post_emb_norm_bias=True,
        post_emb_norm_eps=0.5,
        return_only_embed=True,
        attn_layers=Encoder(dim=8, depth=1, heads=2),
    ).double()
    norm = _randomise(model.post_emb_norm)
    h = torch.randn(3, 8, dtype=torch.float64)
    mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    expected = (h - mean) / torch.sqrt(var + 0.5) * norm.weight + norm.bias
    torch.testing.assert_close(norm(h), expected, rtol=0, atol=1e-12)
    plain = TransformerWrapper(
        num_tokens=11, max_seq_len=6, post_emb_norm=True, attn_layers=Encoder(dim=8, depth=1)
    )
    assert plain.post_emb_norm.bias is None and plain.post_emb_norm.eps == 1e-5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ff_gelu_tanh=True, ff_swish=True), "ff_swish=True and ff_gelu_tanh=True each choose"),
        (dict(ff_inner_dim=0), "ff_inner_dim must be >= 1, got 0"),
        (dict(ff_inner_dim=2.5), "ff_inner_dim must be int | None"),
        (dict(attn_qkv_bias=1), "attn_qkv_bias must be bool"),
    ],
)
def test_option_errors_name_the_keyword(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message.replace("|", r"\|")):
        Decoder(dim=8, depth=1, **kwargs)


def test_post_emb_norm_eps_must_be_positive():
    with pytest.raises(ValueError, match="post_emb_norm_eps must be > 0, got 0"):
        TransformerWrapper(
            num_tokens=5, max_seq_len=4, post_emb_norm_eps=0, attn_layers=Encoder(dim=8, depth=1)
        )
