"""The x-transformers converter refuses options a release cannot express (never a silent
approximation), and keeps converting the 2.x options that share name and meaning."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import x_transformers.x_transformers as M1
from hypothesis import given, settings
from hypothesis import strategies as st
from xt2 import xt2
from xt2_models import TOL, max_logit_diff, pair, tokens

import anyformer as af
from anyformer.config.attention import AttentionConfig
from anyformer.config.feedforward import FeedForwardConfig
from anyformer.config.norm import NormConfig
from anyformer.config.positions import PositionConfig
from anyformer.config.stack import StackConfig
from anyformer.config.wrapper import WrapperConfig
from anyformer.convert import load_x_transformers_state_dict, to_x_transformers_state_dict
from anyformer.convert.x_transformers_support import SUPPORT

torch.set_num_threads(1)


def model(stack: dict[str, Any] | None = None, wrapper: dict[str, Any] | None = None):
    torch.manual_seed(0)
    layers = af.Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, **(stack or {}))
    return af.TransformerWrapper(
        num_tokens=20, max_seq_len=16, attn_layers=layers, **(wrapper or {})
    )


ROPE = dict(rotary_pos_emb=True)
# (id, stack keywords, wrapper keywords, keyword the error names, refused by 1.28.2, by 2.31.10)
CASES = [
    ("sliding_window", dict(attn_sliding_window=4), {}, "attn_sliding_window", True, True),
    ("moe", dict(ff_num_experts=2), {}, "ff_num_experts", True, True),
    ("ff_relu", dict(ff_relu=True), {}, "ff_relu", True, True),
    ("attn_scale", dict(attn_scale=0.25), {}, "attn_scale", True, True),
    ("qkv_bias", dict(attn_qkv_bias=True), {}, "attn_qkv_bias", True, True),
    ("differential", dict(attn_differential=True), {}, "attn_differential", True, True),
    (
        "local_theta",
        {**ROPE, "rotary_local_theta": 1e4 * 2, "attn_sliding_window": 4},
        {},
        "rotary_local_theta",
        True,
        True,
    ),
    (
        "yarn",
        {
            **ROPE,
            "rotary_scaling": "llama3",
            "rotary_original_max_seq_len": 8,
            "rotary_scaling_factor": 2.0,
        },
        {},
        "rotary_scaling",
        True,
        True,
    ),
    ("token_emb_scale", {}, dict(token_emb_scale=2.0), "token_emb_scale", True, True),
    ("logit_softclamp", {}, dict(logit_softclamp_value=30.0), "logit_softclamp_value", True, True),
    (
        "embed_ids_default",
        {},
        dict(embed_num_tokens={"a": 3}, embed_ids_default={"a": 1}),
        "embed_ids_default",
        True,
        True,
    ),
    ("qk_rmsnorm", dict(attn_qk_rmsnorm=True), {}, "attn_qk_rmsnorm", True, True),
    ("output_gate", dict(attn_output_gate=True), {}, "attn_output_gate", True, False),
    ("sink", dict(attn_head_learned_sink=True), {}, "attn_head_learned_sink", True, False),
    (
        "softclamp_logits",
        dict(attn_softclamp_logits=True),
        {},
        "attn_softclamp_logits",
        True,
        False,
    ),
    (
        "mla",
        dict(attn_use_latent_kv=True, attn_dim_latent_kv=8),
        {},
        "attn_use_latent_kv",
        True,
        False,
    ),
    ("layerscale", dict(use_layerscale=True), {}, "use_layerscale", True, False),
    ("value_residual", dict(add_value_residual=True), {}, "add_value_residual", True, False),
    ("hyper", dict(num_residual_streams=2), {}, "num_residual_streams", True, False),
    ("dyt", dict(use_dynamic_tanh=True), {}, "use_dynamic_tanh", True, False),
    ("tie_embedding", {}, dict(tie_embedding=True), "tie_embedding", False, True),
    (
        "qk_norm_dim_scale",
        dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True),
        {},
        "attn_qk_norm_dim_scale",
        False,
        True,
    ),
    ("talking_heads", dict(attn_talking_heads=True), {}, "attn_talking_heads", False, True),
]


def _expect(fn, version: int, refused: bool, keyword: str, m) -> None:
    if not refused:
        fn(m, version)
        return
    with pytest.raises(ValueError) as info:
        fn(m, version)
    assert keyword in str(info.value)
    assert "x-transformers" in str(info.value)


def _export(m, version: int) -> None:
    to_x_transformers_state_dict(m, version=version)


def _load(m, version: int) -> None:
    # its own export, loaded back strictly
    state = to_x_transformers_state_dict(m, version=version)
    load_x_transformers_state_dict(m, state, version=version)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_export_and_load_refuse_options_the_release_lacks(case, version):
    _, stack, wrapper, keyword, refused1, refused2 = case
    m = model(stack, wrapper)
    refused = refused1 if version == 1 else refused2
    _expect(_export, version, refused, keyword, m)
    if refused:
        with pytest.raises(ValueError, match=keyword):
            load_x_transformers_state_dict(m, {}, version=version)
    else:
        _load(m, version)  # strict round trip of its own export


def test_the_message_names_the_release_and_the_value():
    with pytest.raises(ValueError) as info:
        to_x_transformers_state_dict(model(dict(attn_sliding_window=4)), version=2)
    text = str(info.value)
    assert "x-transformers 2.31.10 cannot express attn_sliding_window=4" in text
    assert "version=2" in text


V1_REFUSED = [c for c in CASES if c[4] and c[0] not in ("moe", "yarn", "qk_rmsnorm")]


@settings(max_examples=12, deadline=None)
@given(st.lists(st.sampled_from(V1_REFUSED), min_size=2, max_size=3, unique_by=lambda c: c[0]))
def test_every_refused_option_of_a_model_is_named(cases):
    stack = {k: v for c in cases for k, v in c[1].items()}
    wrapper = {k: v for c in cases for k, v in c[2].items()}
    try:
        m = model(stack, wrapper)
    except (TypeError, ValueError):
        return  # a combination anyformer itself refuses
    with pytest.raises(ValueError) as info:
        to_x_transformers_state_dict(m, version=1)
    for c in cases:
        assert c[3] in str(info.value)


def test_cross_attention_options_are_checked_only_with_cross_attention():
    plain = model(dict(cross_attn_dim_head=4))  # resolved, unused without cross-attention
    to_x_transformers_state_dict(plain)
    torch.manual_seed(0)
    layers = af.Decoder(dim=16, depth=1, heads=2, cross_attend=True, cross_attn_qkv_bias=True)
    crossing = af.TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=layers)
    with pytest.raises(ValueError, match="cross_attn_qkv_bias=True"):
        to_x_transformers_state_dict(crossing)


# --- the table agrees with the releases' signatures ------------------------------------------


def _signatures(module) -> dict[type, set[str]]:
    def names(cls) -> set[str]:
        return set(inspect.signature(cls.__init__).parameters)

    stack = names(module.AttentionLayers)
    return {
        AttentionConfig: names(module.Attention),
        FeedForwardConfig: names(module.FeedForward),
        NormConfig: stack,
        PositionConfig: stack,
        StackConfig: stack,
        WrapperConfig: names(module.TransformerWrapper),
    }


NESTED = {"attention", "cross_attention", "feedforward", "norm", "positions"}
DERIVED = {"rotary_theta"}  # expressed through rotary_base_rescale_factor (inv_freq compared)


@pytest.mark.parametrize("version", [1, 2])
def test_the_table_lists_only_keywords_of_the_release(version):
    module = M1 if version == 1 else xt2()._anyformer_submodules["x_transformers.x_transformers"]
    other = xt2()._anyformer_submodules["x_transformers.x_transformers"] if version == 1 else M1
    mine, theirs = _signatures(module), _signatures(other)
    for cls, params in mine.items():
        support = SUPPORT[cls]
        listed = support.both | (support.only1 if version == 1 else support.only2)
        assert sorted(listed - params - NESTED - DERIVED) == [], cls.__name__
        only = support.only1 if version == 1 else support.only2
        assert sorted(only & theirs[cls]) == [], cls.__name__  # "only" is only


# --- 2.x options with the same name and meaning still convert -------------------------------


@pytest.mark.parametrize(
    "stack",
    [
        dict(use_layerscale=True),
        dict(add_value_residual=True),
        dict(attn_head_learned_sink=True),
        dict(attn_softclamp_logits=True, attn_logit_softclamp_value=5.0),
        dict(use_rmsnorm=True, attn_output_gate=True),
    ],
    ids=["layerscale", "value_residual", "sink", "softclamp", "output_gate"],
)
def test_shared_2x_options_still_convert_with_version_2(stack):
    ours, theirs = pair("Decoder", stack)
    assert max_logit_diff(ours, theirs, tokens()) <= TOL
    written = to_x_transformers_state_dict(ours, version=2)
    expected = theirs.state_dict()
    assert sorted(written) == sorted(expected)
    for key, value in written.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("version", [1, 2])
def test_the_table_misses_no_keyword_the_release_shares(version):
    """A field of anyformer's configuration that the release takes under the same name is in the
    table (or refused for a documented difference of meaning): nothing is refused needlessly."""
    from dataclasses import fields

    from anyformer.convert.x_transformers_support import RUNTIME, SEMANTICS

    module = M1 if version == 1 else xt2()._anyformer_submodules["x_transformers.x_transformers"]
    for cls, params in _signatures(module).items():
        support = SUPPORT[cls]
        names = {f.name for f in fields(cls)} & params
        missed = {
            n
            for n in names
            if not support.expresses(n, version)
            and n not in RUNTIME
            and (version, cls, n) not in SEMANTICS
        }
        assert sorted(missed) == [], cls.__name__
