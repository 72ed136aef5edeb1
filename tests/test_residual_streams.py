"""Residual-stream options under x-transformers 2.x keyword names: value residual (ResFormer),
LayerScale, input reinjection, U-Net skips, DyT, adaptive LayerNorm / RMSNorm and adaLN-Zero.

Each option is compared with x-transformers 2.x logits from the same weights (1e-5, through
tests/xt2_models.py); cached decoding equals the uncached forward; outputs are causal."""

from __future__ import annotations

import pytest
import torch
from xt2_models import TOL, explicit, max_logit_diff, pair, perturb_, tokens

import anyformer as af
from anyformer.cache import KVCache
from anyformer.convert import to_x_transformers_state_dict

torch.set_num_threads(1)

COND = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
COND16 = torch.randn(2, 16, generator=torch.Generator().manual_seed(6))

#: name -> (stack keywords, forward keywords)
OPTIONS: dict[str, tuple[dict, dict]] = {
    "value_residual": (dict(add_value_residual=True, depth=3), {}),
    "value_residual_fixed_mix_rotary": (
        dict(add_value_residual=True, learned_value_residual_mix=False, rotary_pos_emb=True),
        {},
    ),
    "value_residual_fused_rotary": (
        dict(add_value_residual=True, rotary_pos_emb=True, attn_flash=True),
        {},
    ),
    "value_residual_mqa": (
        dict(add_value_residual=True, learned_value_residual_mix=False, attn_kv_heads=1),
        {},
    ),
    "layerscale": (dict(use_layerscale=True), {}),
    "layerscale_init_shift_sandwich": (
        dict(use_layerscale=True, layerscale_init_value=0.1, shift_tokens=1, sandwich_norm=True),
        {},
    ),
    "layerscale_no_unit_offset": (dict(use_layerscale=True, norm_add_unit_offset=False), {}),
    "reinject": (dict(reinject_input=True), {}),
    "reinject_gated": (dict(reinject_input=True, learned_reinject_input_gate=True), {}),
    "unet_4": (dict(unet_skips=True, depth=4), {}),
    "unet_5": (dict(unet_skips=True, depth=5), {}),
    "dyt": (dict(use_dynamic_tanh=True), {}),
    "dyt_alpha": (dict(use_dynamic_tanh=True, dynamic_tanh_init_alpha=0.5), {}),
    "adaptive_layernorm": (dict(use_adaptive_layernorm=True), dict(condition=COND)),
    "adaptive_rmsnorm_per_token": (
        dict(use_adaptive_rmsnorm=True, dim_condition=16),
        dict(condition=torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(7))),
    ),
    "ada_ln_zero": (
        dict(use_adaptive_layernorm=True, use_adaptive_layerscale=True, dim_condition=16),
        dict(condition=COND16),
    ),
    "all_together": (
        dict(
            add_value_residual=True,
            use_layerscale=True,
            reinject_input=True,
            learned_reinject_input_gate=True,
            unet_skips=True,
            depth=4,
            use_adaptive_rmsnorm=True,
            rotary_pos_emb=True,
        ),
        dict(condition=COND),
    ),
}


#: hyper-connections: compared with 2.x whose Sinkhorn step is corrected (see hyper_2x)
HYPER: dict[str, tuple[dict, dict]] = {
    "hyper_2": (dict(num_residual_streams=2), {}),
    "hyper_3_rotary_iters": (
        dict(num_residual_streams=3, hyper_conn_sinkhorn_iters=2, rotary_pos_emb=True),
        {},
    ),
    "hyper_4_with_others": (
        dict(
            num_residual_streams=4,
            depth=3,
            use_layerscale=True,
            unet_skips=True,
            add_value_residual=True,
            sandwich_norm=True,
        ),
        {},
    ),
    "hyper_adaptive": (
        dict(num_residual_streams=2, use_adaptive_rmsnorm=True),
        dict(condition=COND),
    ),
}
EVERY = {**OPTIONS, **HYPER}


@pytest.fixture
def hyper_2x(monkeypatch):
    """x-transformers 2.31.10 hands its Sinkhorn step (s, 1, s) slices of the stream-mixing
    logits, which makes the mixing the all-ones matrix; corrected here to the s x s matrix the
    papers project (every other part of its hyper-connections is used as it is)."""
    from xt2 import xt2

    module = xt2()._anyformer_submodules["x_transformers.x_transformers"]
    original = module.sinkhorn
    monkeypatch.setattr(
        module, "sinkhorn", lambda t, iters=20: original(t.squeeze(-2), iters).unsqueeze(-2)
    )
    return original


@pytest.mark.parametrize("name", sorted(HYPER))
def test_hyper_connections_equal_x_transformers_2x_with_its_sinkhorn_step_corrected(
    name: str, hyper_2x
) -> None:
    stack_kw, forward_kw = HYPER[name]
    ours, theirs = pair("Decoder", stack_kw)
    assert max_logit_diff(ours, theirs, tokens(), **forward_kw) <= TOL


def test_stream_mixing_is_doubly_stochastic_and_2x_s_step_is_all_ones(hyper_2x) -> None:
    from anyformer.stack.hyper import sinkhorn

    logits = torch.randn(5, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mixed = sinkhorn(logits, 20)
    torch.testing.assert_close(mixed.sum(-1), torch.ones(5, 3, dtype=torch.float64))
    torch.testing.assert_close(mixed.sum(-2), torch.ones(5, 3, dtype=torch.float64))
    # the shape 2.31.10 hands its step: (..., s, 1, s) -> every entry 1
    assert torch.equal(
        hyper_2x(logits.unsqueeze(-2), 5), torch.ones(5, 3, 1, 3, dtype=torch.float64)
    )


def test_hyper_connection_layer_by_hand_float64() -> None:
    """One layer from the paper's formulas: branch input sum_s sigmoid(a_pre) x_s, streams
    H_res^T x + 2 sigmoid(beta) * out."""
    from anyformer.stack.hyper import HyperConnection

    torch.manual_seed(0)
    hc = HyperConnection(8, layer_index=1, streams=3, sinkhorn_iters=4).double()
    perturb_(hc, scale=0.5)
    x = torch.randn(2 * 3, 4, 8, dtype=torch.float64)
    out = torch.randn(2, 4, 8, dtype=torch.float64)
    h, state = hc.prepare(x)
    got = hc.join(out, state)
    xs = x.view(2, 3, 4, 8)
    for b in range(2):
        for n in range(4):
            streams = xs[b, :, n]  # (s, d)
            normed = torch.nn.functional.layer_norm(streams, (8,), hc.norm.weight)
            alpha = normed @ hc.dynamic_alpha_fn * hc.dynamic_alpha_scale + hc.static_alpha
            pre = torch.sigmoid(alpha[:, 0])
            m = torch.softmax(alpha[:, 1:], dim=0)
            for _ in range(4):
                m = m / m.sum(-1, keepdim=True)
                m = m / m.sum(0, keepdim=True)
            dyn = torch.sigmoid(normed @ hc.dynamic_beta_fn) * 2 * hc.dynamic_beta_scale
            beta = torch.sigmoid(dyn + hc.static_beta) * 2
            torch.testing.assert_close(h[b, n], pre @ streams)
            expected = m.T @ streams + beta[:, None] * out[b, n]
            torch.testing.assert_close(got.view(2, 3, 4, 8)[b, :, n], expected)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_logits_equal_x_transformers_2x_from_the_same_weights(name: str) -> None:
    stack_kw, forward_kw = OPTIONS[name]
    ours, theirs = pair("Decoder", stack_kw)
    assert max_logit_diff(ours, theirs, tokens(), **forward_kw) <= TOL


@pytest.mark.parametrize(
    "name",
    ["value_residual", "unet_4", "reinject_gated", "dyt", "layerscale", "adaptive_layernorm"],
)
def test_encoder_logits_equal_x_transformers_2x(name: str) -> None:
    stack_kw, forward_kw = OPTIONS[name]
    ours, theirs = pair("Encoder", stack_kw)
    assert max_logit_diff(ours, theirs, tokens(), **forward_kw) <= TOL


def test_cross_attention_value_residual_equals_x_transformers_2x() -> None:
    """Cross-attention layers mix with the first cross-attention's values (weight 0.5)."""
    ours, theirs = pair("Decoder", dict(add_value_residual=True, cross_attend=True, depth=3))
    context = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(8))
    assert max_logit_diff(ours, theirs, tokens(), context=context) <= TOL


def _per_sequence(forward_kw: dict) -> dict:
    """Cached decoding needs a condition that does not depend on the rows (per sequence)."""
    cond = forward_kw.get("condition")
    if cond is not None and cond.ndim == 3:
        return dict(condition=cond[:, 0])
    return forward_kw


@pytest.mark.parametrize("name", sorted(EVERY))
def test_cached_decoding_equals_the_uncached_forward(name: str) -> None:
    stack_kw, forward_kw = EVERY[name]
    ours, _ = pair("Decoder", stack_kw)
    forward_kw = _per_sequence(forward_kw)
    x = tokens(2, 10)
    with torch.no_grad():
        expected = ours(x, **forward_kw)
        cache = KVCache()
        first = ours(x[:, :4], cache=cache, **forward_kw)
        torch.testing.assert_close(first, expected[:, :4], atol=1e-5, rtol=0)
        for t in range(4, 10):
            step = ours(x[:, t : t + 1], cache=cache, input_not_include_cache=True, **forward_kw)
            torch.testing.assert_close(step[:, -1], expected[:, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(EVERY))
def test_decoder_outputs_are_causal(name: str) -> None:
    """Changing token t changes no logits before t."""
    stack_kw, forward_kw = EVERY[name]
    ours, _ = pair("Decoder", stack_kw)
    forward_kw = _per_sequence(forward_kw)
    x = tokens(2, 10)
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % 64
    with torch.no_grad():
        a, b = ours(x, **forward_kw), ours(y, **forward_kw)
    assert torch.equal(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_greedy_generation_with_a_condition_uses_the_cache_and_matches_recomputation() -> None:
    ours, _ = pair("Decoder", dict(use_adaptive_layernorm=True, use_adaptive_layerscale=True))
    lm = af.AutoregressiveWrapper(ours)
    prompt = tokens(2, 3)
    cached = lm.generate(prompt, 8, temperature=0.0, cache_kv=True, condition=COND)
    again = lm.generate(prompt, 8, temperature=0.0, cache_kv=False, condition=COND)
    assert torch.equal(cached, again)
    other = lm.generate(prompt, 8, temperature=0.0, cache_kv=True, condition=-COND)
    assert not torch.equal(cached, other)  # the condition is read


@pytest.mark.parametrize("name", ["all_together", "dyt", "ada_ln_zero", "unet_5", "hyper_2"])
def test_written_state_dict_loads_into_2x_with_equal_logits(name: str, hyper_2x) -> None:
    from xt2 import xt2

    stack_kw, forward_kw = EVERY[name]
    ours, _ = pair("Decoder", stack_kw, seed=4)
    kw = explicit(stack_kw)
    offset = kw.get("norm_add_unit_offset", True)
    X = xt2()
    fresh = X.TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=X.Decoder(verbose=False, **kw)
    )
    fresh.load_state_dict(
        to_x_transformers_state_dict(ours, version=2, norm_add_unit_offset=offset)
    )
    assert max_logit_diff(ours, fresh.eval(), tokens(), **forward_kw) <= TOL


def _stack(**kw):
    return af.Decoder(dim=32, depth=2, heads=2, attn_dim_head=16, **kw)


def test_value_residual_mixes_with_the_first_layers_values_float64() -> None:
    """Hand computation (ResFormer): layer 2's values are v1 + w (v2 - v1), w = 0.5."""
    torch.manual_seed(0)
    stack = _stack(add_value_residual=True, learned_value_residual_mix=False).double().eval()
    perturb_(stack)
    x = torch.randn(1, 5, 32, dtype=torch.float64)
    seen = []

    def grab(module, args, kwargs, out):
        seen.append(out)

    hooks = [
        block.branch.qkv.register_forward_hook(grab, with_kwargs=True)
        for block in stack.layers
        if block.layer_type == "a"
    ]
    values = []
    originals = [block.branch.attend.forward for block in stack.layers if block.layer_type == "a"]
    for block, original in zip([b for b in stack.layers if b.layer_type == "a"], originals):

        def spy(q, k, v, *args, _original=original, **kwargs):
            values.append(v)
            return _original(q, k, v, *args, **kwargs)

        block.branch.attend.forward = spy
    with torch.no_grad():
        stack(x)
    for h in hooks:
        h.remove()
    v1 = seen[0][2].view(1, 5, 2, 16).transpose(1, 2)
    v2 = seen[1][2].view(1, 5, 2, 16).transpose(1, 2)
    torch.testing.assert_close(values[0], v1, atol=1e-12, rtol=0)
    torch.testing.assert_close(values[1], v1 + 0.5 * (v2 - v1), atol=1e-12, rtol=0)


def test_plain_stacks_build_no_stream_modules() -> None:
    """Options off: no Streams, no branch scale, the blocks join by a plain sum."""
    stack = _stack()
    assert stack.streams is None
    assert all(block.branch_scale is None and block.plain_join for block in stack.layers)
    assert stack.layers[0].branch.value_residual is None


def test_parameter_counts_follow_the_options() -> None:
    base = sum(p.numel() for p in _stack().parameters())
    count = lambda **kw: sum(p.numel() for p in _stack(**kw).parameters()) - base  # noqa: E731
    assert count(use_layerscale=True) == 4 * 32
    assert count(add_value_residual=True) == 32 * 2 + 2  # one learned mix: layer 2 only
    assert count(add_value_residual=True, learned_value_residual_mix=False) == 0
    assert count(reinject_input=True, learned_reinject_input_gate=True) == 32 * 32 + 32
    assert count(unet_skips=True) == 64 * 32  # depth 2: block 1 takes block 0's input
    # DyT: alpha, weight, bias per norm (4 block norms + final) in place of the LayerNorm gains
    assert count(use_dynamic_tanh=True) == 5 * (1 + 32 + 32) - 5 * 32
    assert count(use_adaptive_rmsnorm=True, dim_condition=8) == 5 * 8 * 32 - 5 * 32
    # hyper-connections, s = 3: per layer norm d, beta s, alpha s (1 + s), alpha map d (1 + s),
    # beta map d, two scales; plus one embedding per stream
    per_layer = 32 + 3 + 3 * 4 + 32 * 4 + 32 + 2
    assert count(num_residual_streams=3) == 4 * per_layer + 3 * 32


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        (
            dict(learned_reinject_input_gate=True),
            ValueError,
            "learned_reinject_input_gate=True gates the reinjected input: it needs "
            "reinject_input=True",
        ),
        (
            dict(use_layerscale=True, use_adaptive_layerscale=True),
            ValueError,
            "use_layerscale and use_adaptive_layerscale cannot be combined",
        ),
        (
            dict(add_value_residual=True, heads=4, attn_kv_heads=2),
            ValueError,
            "learned_value_residual_mix=True weights the values per query head",
        ),
        (
            dict(unet_skips=True, custom_layers=("a", "f", "a", "f")),
            ValueError,
            "unet_skips and custom_layers cannot be combined",
        ),
        (dict(unet_skips=True, depth=1), ValueError, "unet_skips=True keeps depth // 2"),
        (
            dict(use_dynamic_tanh=True, pre_norm=False),
            ValueError,
            "use_dynamic_tanh=True replaces the pre-norms: it needs pre_norm=True",
        ),
        (
            dict(use_dynamic_tanh=True, use_rmsnorm=True),
            ValueError,
            "each choose the norm; set only one",
        ),
        (dict(dim_condition=0), ValueError, "dim_condition must be >= 1, got 0"),
        (dict(use_layerscale=1), TypeError, "use_layerscale"),
        (dict(num_residual_streams=0), ValueError, "num_residual_streams must be >= 1, got 0"),
        (
            dict(num_residual_streams=2, reinject_input=True),
            ValueError,
            "replaces the residual connection, which reinject_input=True also changes",
        ),
        (
            dict(hyper_conn_sinkhorn_iters=-1),
            ValueError,
            "hyper_conn_sinkhorn_iters must be >= 0, got -1",
        ),
    ],
)
def test_invalid_combinations_name_the_keywords(kw, error, message) -> None:
    base = dict(dim=32, depth=2, heads=2, attn_dim_head=16)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        af.Decoder(**{**base, **kw})


def test_condition_is_checked() -> None:
    x = torch.randn(2, 5, 32)
    adaptive = _stack(use_adaptive_layernorm=True)
    with pytest.raises(ValueError, match=r"condition is required: .* condition=\(batch, 32\)"):
        adaptive(x)
    with pytest.raises(ValueError, match=r"got \(2, 7\)"):
        adaptive(x, condition=torch.randn(2, 7))
    with pytest.raises(ValueError, match="condition was given but this stack has no adaptive"):
        _stack()(x, condition=torch.randn(2, 32))
    with pytest.raises(ValueError, match="condition was given but this stack has no adaptive"):
        _stack(add_value_residual=True)(x, condition=torch.randn(2, 32))
    assert adaptive(x, condition=torch.randn(2, 5, 32)).shape == (2, 5, 32)


def test_config_dict_round_trip_rebuilds_the_same_function() -> None:
    from anyformer.stack.layers import AttentionLayers

    stack = _stack(
        add_value_residual=True,
        use_layerscale=True,
        unet_skips=True,
        use_adaptive_rmsnorm=True,
        num_residual_streams=2,
    )
    perturb_(stack)
    again = AttentionLayers.from_config(stack.config_dict())
    again.load_state_dict(stack.state_dict())
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(stack(x, condition=c), again(x, condition=c))


@pytest.mark.parametrize("kw", [dict(num_residual_streams=2), dict(use_adaptive_layernorm=True)])
def test_transformer_xl_memories_are_refused_with_streams_or_conditions(kw) -> None:
    with pytest.raises(ValueError, match="mems: Transformer-XL memories cannot be combined"):
        _stack(**kw)(torch.randn(1, 3, 32), mems=[torch.randn(1, 2, 32)] * 2)
