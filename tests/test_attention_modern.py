"""Softclamped logits and output, the output gate, the learned attention sink: logits equal to
x-transformers 2.x from the same weights, float64 hand computations, cached == uncached,
causality, and the kernel path each option allows."""

from __future__ import annotations

import math

import pytest
import torch
from xt2_models import TOL, max_logit_diff, pair, tokens

import anyformer as af
from anyformer.nn.attend import Attend
from anyformer.nn.attention_sink import AttentionSink
from anyformer.nn.masks import AttentionMask
from anyformer.nn.output_gate import OutputGate

torch.set_num_threads(1)

CASES = {
    "softclamp_logits": dict(attn_softclamp_logits=True, attn_logit_softclamp_value=0.5),
    "softclamp_logits_alibi": dict(
        attn_softclamp_logits=True, attn_logit_softclamp_value=0.7, alibi_pos_bias=True
    ),
    "softclamp_output": dict(softclamp_output=True, softclamp_output_value=0.3),
    "output_gate": dict(attn_output_gate=True),
    "output_gate_headwise": dict(attn_output_gate=True, attn_output_gate_headwise=True),
    "output_gate_gqa": dict(heads=4, attn_kv_heads=2, attn_output_gate=True),
    "output_gate_headwise_gqa": dict(
        heads=4, attn_kv_heads=2, attn_output_gate=True, attn_output_gate_headwise=True
    ),
    "sink": dict(attn_head_learned_sink=True),
    "sink_rotary": dict(attn_head_learned_sink=True, rotary_pos_emb=True),
    "sink_gqa": dict(heads=4, attn_kv_heads=2, attn_head_learned_sink=True),
    "sink_mem_kv": dict(attn_num_mem_kv=2, attn_head_learned_sink=True),
    "output_gate_zero_kv": dict(attn_add_zero_kv=True, attn_output_gate=True),
    "softclamp_residual_attn": dict(
        residual_attn=True, attn_softclamp_logits=True, attn_logit_softclamp_value=0.5
    ),
}


@pytest.mark.parametrize("kw", [dict(attn_head_learned_sink=True), dict(attn_output_gate=True)])
def test_cross_attention_equals_x_transformers_2(kw: dict) -> None:
    ours, theirs = pair("Decoder", dict(cross_attend=True, **kw), scale=0.3)
    context = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(4))
    assert max_logit_diff(ours, theirs, tokens(), context=context) <= TOL


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("kind", ["Decoder", "Encoder"])
def test_equals_x_transformers_2(name: str, kind: str) -> None:
    ours, theirs = pair(kind, CASES[name], scale=0.3 if "sink" in name else 0.1)
    assert max_logit_diff(ours, theirs, tokens()) <= TOL


def test_equals_x_transformers_2_with_padding_mask() -> None:
    ours, theirs = pair("Encoder", CASES["sink"], scale=0.3)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 7:] = False
    a, b = ours(tokens(), mask=mask), theirs(tokens(), mask=mask)
    assert (a - b)[mask].abs().max().item() <= TOL


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    stack = af.Decoder(dim=32, depth=2, heads=4, attn_dim_head=8, rotary_pos_emb=True, **kw)
    model = af.TransformerWrapper(num_tokens=64, max_seq_len=0, attn_layers=stack)
    with torch.no_grad():  # open the zero-initialised gates and sinks
        for name, p in model.named_parameters():
            if "sink" in name or "output_gate" in name:
                p.normal_()
    return model.eval()


MODELS = {
    "softclamp_logits": dict(attn_softclamp_logits=True, attn_logit_softclamp_value=0.5),
    "output_gate": dict(attn_output_gate=True, attn_output_gate_headwise=True),
    "sink": dict(attn_head_learned_sink=True, attn_kv_heads=2),
    "sink_window": dict(attn_head_learned_sink=True, attn_sliding_window=3),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_decoding_equals_uncached(name: str) -> None:
    model, x = _model(**MODELS[name]), tokens(2, 9)
    with torch.no_grad():
        full = model(x)
        cache = None
        steps = []
        for i in range(x.shape[1]):
            out, inter = model(
                x[:, i : i + 1],
                cache=cache,
                return_intermediates=True,
                input_not_include_cache=True,
            )
            cache = inter.cache
            steps.append(out)
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", sorted(MODELS))
def test_causal(name: str) -> None:
    model, x = _model(**MODELS[name]), tokens(1, 10)
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 1) % 64
    with torch.no_grad():
        assert (model(x)[:, :6] - model(y)[:, :6]).abs().max().item() <= 1e-6


def test_paths_are_truthful() -> None:
    def path(**kw) -> tuple[str, tuple[str, ...]]:
        info = _model(**kw).attn_layers.attention_paths()[0]
        return info["path"], info["explicit_because"]

    assert path(attn_softclamp_logits=True) == ("explicit", ("softclamp_logits=True",))
    assert path(attn_head_learned_sink=True) == ("fused", ())
    assert path(attn_output_gate=True) == ("fused", ())
    with pytest.raises(ValueError, match="softclamp_logits"):
        af.Decoder(dim=32, depth=1, attn_flash=True, attn_softclamp_logits=True)


def test_fused_and_explicit_sink_agree() -> None:
    fused = _model(attn_head_learned_sink=True)
    explicit = _model(attn_head_learned_sink=True, attn_kernel="explicit")
    explicit.load_state_dict(fused.state_dict())
    x = tokens(2, 11)
    with torch.no_grad():
        assert (fused(x) - explicit(x)).abs().max().item() <= 1e-5


def test_sink_by_hand_float64() -> None:
    """attn_ij = exp(l_ij) / (exp(s_h) + sum_j exp(l_ij)), l = q.k / sqrt(d), causal."""
    torch.manual_seed(3)
    b, h, n, d = 1, 2, 4, 3
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64) for _ in range(3))
    sink = AttentionSink(h).double()
    with torch.no_grad():
        sink.head_attn_sink.copy_(torch.tensor([0.7, -1.3]))
    kk, vv, plan = sink(k, v, AttentionMask(is_causal=True), n)
    out, _ = Attend()(q, kk, vv, plan)
    expect = torch.zeros_like(out)
    for hh in range(h):
        for i in range(n):
            logits = [float(q[0, hh, i] @ k[0, hh, j]) / math.sqrt(d) for j in range(i + 1)]
            den = math.exp(float(sink.head_attn_sink[hh])) + sum(math.exp(x) for x in logits)
            for j in range(i + 1):
                expect[0, hh, i] += math.exp(logits[j]) / den * v[0, hh, j]
    assert (out - expect).abs().max().item() <= 1e-12


def test_softclamp_logits_by_hand_float64() -> None:
    """softmax(c * tanh(q.k / (sqrt(d) c))) v, causal."""
    torch.manual_seed(4)
    attn = af.Attention(8, heads=1, causal=True, dim_head=4, softclamp_logits=True,
                        logit_softclamp_value=0.3).double()  # fmt: skip
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    w = attn.qkv.to_qkv.weight
    q, k, v = (x[0] @ w[i * 4 : (i + 1) * 4].T for i in range(3))
    logits = 0.3 * torch.tanh(q @ k.T / 2.0 / 0.3)
    logits = logits.masked_fill(torch.ones(5, 5).triu(1).bool(), -math.inf)
    expect = (logits.softmax(-1) @ v) @ attn.to_out.weight.T
    assert (attn(x)[0] - expect).abs().max().item() <= 1e-12


def test_output_gate_by_hand() -> None:
    torch.manual_seed(5)
    gate = OutputGate(heads=2, value_dim=3, headwise=True).double()
    with torch.no_grad():
        gate.weight.normal_()
    o = torch.randn(1, 4, 6, dtype=torch.float64)
    g = torch.sigmoid(o @ gate.weight.T)  # (1, 4, 2)
    expect = o * g.repeat_interleave(3, dim=-1)
    assert (gate(o) - expect).abs().max().item() <= 1e-12


def test_logit_softclamp_value_on_wrapper() -> None:
    torch.manual_seed(6)
    stack = af.Decoder(dim=16, depth=1, heads=2)
    plain = af.TransformerWrapper(num_tokens=32, max_seq_len=8, attn_layers=stack).eval()
    capped = af.TransformerWrapper(
        num_tokens=32, max_seq_len=8, attn_layers=stack, logit_softclamp_value=0.25
    ).eval()
    capped.load_state_dict(plain.state_dict())
    x = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        expect = 0.25 * torch.tanh(plain(x).double() / 0.25)
        assert (capped(x).double() - expect).abs().max().item() <= 1e-6
        _, emb = capped(x, return_logits_and_embeddings=True)
        assert torch.equal(emb, plain(x, return_embeddings=True))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(attn_logit_softclamp_value=3.0), "attn_softclamp_logits=False"),
        (dict(attn_softclamp_logits=True, attn_logit_softclamp_value=0.0), "> 0, got 0.0"),
        (dict(attn_output_gate_headwise=True), "needs attn_output_gate=True"),
        (dict(attn_output_gate=True, attn_gate_values=True), "choose one"),
        (dict(attn_head_learned_sink=True, attn_softclamp_logits=True), "must not be clamped"),
        (dict(softclamp_output_value=3.0), "softclamp_output=False"),
        (dict(softclamp_output=True, softclamp_output_value=-1.0), "must be > 0, got -1.0"),
    ],
)
def test_errors_name_the_keyword(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        af.Decoder(dim=16, depth=1, **kw)


def test_wrapper_cap_error() -> None:
    with pytest.raises(ValueError, match="logit_softclamp_value must be > 0"):
        af.TransformerWrapper(
            num_tokens=8, max_seq_len=4, attn_layers=af.Decoder(dim=8, depth=1),
            logit_softclamp_value=0.0,
        )  # fmt: skip


GENERATE = {
    **MODELS,
    "softclamp_output": dict(softclamp_output=True, softclamp_output_value=0.5),
    "differential": dict(attn_differential=True, attn_kv_heads=2),
}


@pytest.mark.parametrize("name", sorted(GENERATE))
def test_generate_eager_and_compiled_follow_the_full_forward(name: str) -> None:
    """Greedy tokens of cached generation (the lean decoding loop must not skip the option)
    and of compiled decoding are the argmax of the uncached forward over the whole sequence."""
    lm = af.AutoregressiveWrapper(_model(**GENERATE[name]))
    prompt = tokens(2, 5)
    eager = lm.generate(prompt, 8, temperature=0.0)
    with torch.no_grad():
        full = lm.net(torch.cat((prompt, eager), 1))[:, 4:-1].argmax(-1)
    assert torch.equal(eager, full)
    if name == "differential":  # the static cache's key width is 2 * dim_head
        compiled = lm.generate(prompt, 8, temperature=0.0, compile={"backend": "eager"})
        assert torch.equal(compiled, eager)


@pytest.mark.parametrize(
    "kw",
    [
        dict(heads=4, attn_kv_heads=2, attn_output_gate=True, attn_head_learned_sink=True),
        dict(heads=4, attn_kv_heads=2, attn_output_gate=True, attn_output_gate_headwise=True),
        dict(
            heads=4,
            attn_use_latent_kv=True,
            attn_dim_latent_kv=12,
            attn_latent_rope_subheads=2,
            rotary_pos_emb=True,
        ),
    ],
)
def test_saved_for_x_transformers_2(kw: dict) -> None:
    """Our weights (changed after loading) written in the 2.x layout give 2.x our logits."""
    from anyformer.convert import to_x_transformers_state_dict

    ours, theirs = pair("Decoder", kw)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    theirs.load_state_dict(to_x_transformers_state_dict(ours, version=2))
    assert max_logit_diff(ours, theirs, tokens()) <= TOL
