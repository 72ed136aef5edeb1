"""Multi-head latent attention (DeepSeek-V2 2405.04434; x-transformers 2.x keywords): logits
equal to 2.x from the same weights, a KV cache holding only the latents, cached == uncached,
causality, errors."""

from __future__ import annotations

import pytest
import torch
from xt2_models import TOL, max_logit_diff, pair, tokens

import anyformer as af

torch.set_num_threads(1)

LATENT_KV = dict(attn_use_latent_kv=True, attn_dim_latent_kv=12)
CASES = {
    "kv": LATENT_KV,
    "q": dict(attn_use_latent_q=True, attn_dim_latent_q=10),
    "q_kv_rope": dict(
        **LATENT_KV,
        attn_use_latent_q=True,
        attn_dim_latent_q=10,
        attn_latent_rope_subheads=1,
        rotary_pos_emb=True,
    ),
    "rope_4_heads": dict(**LATENT_KV, heads=4, attn_latent_rope_subheads=2, rotary_pos_emb=True),
    "rope_no_rotary": dict(**LATENT_KV, attn_latent_rope_subheads=1),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("kind", ["Decoder", "Encoder"])
def test_equals_x_transformers_2(name: str, kind: str) -> None:
    ours, theirs = pair(kind, CASES[name])
    assert max_logit_diff(ours, theirs, tokens()) <= TOL


def test_cross_attention_equals_x_transformers_2() -> None:
    ours, theirs = pair("Decoder", dict(**LATENT_KV, cross_attend=True))
    context = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(4))
    assert max_logit_diff(ours, theirs, tokens(), context=context) <= TOL


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    stack = af.Decoder(
        dim=32, depth=2, heads=4, attn_dim_head=8, rotary_pos_emb=True, **LATENT_KV,
        attn_latent_rope_subheads=1, **kw,
    )  # fmt: skip
    return af.TransformerWrapper(num_tokens=64, max_seq_len=0, attn_layers=stack).eval()


def _decode(model: torch.nn.Module, x: torch.Tensor):
    cache, steps = None, []
    with torch.no_grad():
        for i in range(x.shape[1]):
            out, inter = model(
                x[:, i : i + 1],
                cache=cache,
                return_intermediates=True,
                input_not_include_cache=True,
            )
            cache, steps = inter.cache, [*steps, out]
    return torch.cat(steps, 1), cache


@pytest.mark.parametrize("kw", [dict(), dict(attn_sliding_window=3), dict(alibi_pos_bias=True)])
def test_cached_equals_uncached_and_causal(kw: dict) -> None:
    model, x = _model(**kw), tokens(2, 9)
    stepped, _ = _decode(model, x)
    with torch.no_grad():
        full = model(x)
        y = x.clone()
        y[:, 6:] = (y[:, 6:] + 1) % 64
        assert (model(y)[:, :6] - full[:, :6]).abs().max().item() <= 1e-6
    assert (stepped - full).abs().max().item() <= 1e-5


def test_cache_holds_only_the_latents() -> None:
    """Per token and layer: 12 latent features + 1 rotary key head of 8, instead of 4 key and
    4 value heads of 8 (64 features)."""
    _, cache = _decode(_model(), tokens(2, 6))
    for slot in range(2):
        layer = cache.layer(slot, False)
        assert layer.k.shape[0] == 2 and layer.k.shape[1] == 1 and layer.k.shape[-1] == 12
        assert layer.v.shape[1] == 1 and layer.v.shape[-1] == 8
        per_token = layer.k.shape[1] * layer.k.shape[-1] + layer.v.shape[1] * layer.v.shape[-1]
        assert per_token == 20  # vs 2 * 4 * 8 = 64 without latents


def test_generate_follows_the_full_forward() -> None:
    lm = af.AutoregressiveWrapper(_model())
    prompt = tokens(2, 4)
    out = lm.generate(prompt, 6, temperature=0.0)
    with torch.no_grad():
        full = lm.net(torch.cat((prompt, out), 1))[:, 3:-1].argmax(-1)
    assert torch.equal(out, full)
    with pytest.warns(UserWarning, match="attn_use_latent_kv"):  # static cache: eager instead
        compiled = lm.generate(prompt, 6, temperature=0.0, compile={"backend": "eager"})
    assert torch.equal(compiled, out)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(attn_use_latent_kv=True), "attn_use_latent_kv=True and attn_dim_latent_kv go"),
        (dict(attn_dim_latent_q=4), "attn_use_latent_q=True and attn_dim_latent_q go"),
        (dict(attn_latent_rope_subheads=1), "needs attn_use_latent_kv=True"),
        (dict(**LATENT_KV, attn_kv_heads=2), "cannot be combined with attn_kv_heads"),
        (dict(**LATENT_KV, rotary_pos_emb=True), "needs latent_rope_subheads"),
        (dict(**LATENT_KV, attn_latent_rope_subheads=4), "must be below heads"),
    ],
)
def test_errors(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        af.Decoder(dim=32, depth=1, heads=4, **kw)
