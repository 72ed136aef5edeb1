"""anyformer.convert.x_transformers with ``version=2``: checkpoints of x-transformers 2.x (the
release of tests/xt2.py) load into anyformer models built with the same keywords and give the
same logits (1e-5), and anyformer writes state_dicts 2.x loads (tests/xt2_models.py)."""

from __future__ import annotations

import pytest
import torch
from xt2 import xt2
from xt2_models import TOL, explicit, max_logit_diff, pair, perturb_, tokens

import anyformer as af
from anyformer.convert import load_x_transformers_state_dict, to_x_transformers_state_dict

torch.set_num_threads(1)

#: configurations of the seed design that exist in both releases with the same meaning
SEEDS = {
    "decoder": ("Decoder", {}),
    "encoder": ("Encoder", {}),
    "rotary": ("Decoder", dict(rotary_pos_emb=True)),
    "rotary_partial_gqa": (
        "Decoder",
        dict(rotary_pos_emb=True, rotary_emb_dim=8, heads=4, attn_kv_heads=2),
    ),
    "rotary_xpos": ("Decoder", dict(rotary_xpos=True)),
    "rotary_encoder_split_qkv": ("Encoder", dict(rotary_pos_emb=True, attn_value_dim_head=8)),
    "mqa": ("Decoder", dict(attn_kv_heads=1)),
    "gqa": ("Decoder", dict(heads=4, attn_kv_heads=2)),
    "glu": ("Decoder", dict(ff_glu=True)),
    "rmsnorm": ("Decoder", dict(use_rmsnorm=True)),
    "scalenorm": ("Decoder", dict(use_scalenorm=True)),
    "simple_rmsnorm": ("Decoder", dict(use_simple_rmsnorm=True)),
    "alibi": ("Decoder", dict(alibi_pos_bias=True)),
    "t5_bias": ("Decoder", dict(rel_pos_bias=True)),
    "dynamic_bias_norm": ("Decoder", dict(dynamic_pos_bias=True, dynamic_pos_bias_norm=True)),
    "qk_norm": ("Decoder", dict(attn_qk_norm=True)),
    "sandwich": ("Decoder", dict(sandwich_norm=True)),
    "post_ln": ("Decoder", dict(pre_norm=False)),
    "no_final_norm": ("Decoder", dict(pre_norm_has_final_norm=False)),
    "post_act_ln": ("Decoder", dict(ff_post_act_ln=True)),
    "macaron": ("Decoder", dict(macaron=True)),
    "scale_residual": ("Decoder", dict(scale_residual=True)),
    "no_unit_offset": ("Decoder", dict(use_rmsnorm=True, norm_add_unit_offset=False)),
    "llama_like": (
        "Decoder",
        dict(
            attn_flash=True,
            rotary_pos_emb=True,
            ff_glu=True,
            ff_swish=True,
            use_rmsnorm=True,
            heads=4,
            attn_kv_heads=2,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_configuration_loads_from_2x_weights_with_equal_logits(name: str) -> None:
    kind, kw = SEEDS[name]
    ours, theirs = pair(kind, kw)
    assert max_logit_diff(ours, theirs, tokens()) <= TOL


def test_wrapper_option_post_emb_norm() -> None:
    """(2.x's tie_embedding scales the logits by dim ** -0.5, 1.28.x and anyformer do not: it is
    not a seed configuration of both.)"""
    ours, theirs = pair("Decoder", {}, dict(post_emb_norm=True))
    assert max_logit_diff(ours, theirs, tokens()) <= TOL


@pytest.mark.parametrize("name", ["rotary_partial_gqa", "llama_like", "no_unit_offset"])
def test_written_state_dict_loads_into_2x_with_equal_logits(name: str) -> None:
    """to_x_transformers_state_dict(version=2) inverts the loading: a fresh 2.x model that
    loads it (strict) computes our logits."""
    kind, kw = SEEDS[name]
    ours, _ = pair(kind, kw, seed=3)
    kw = explicit(kw)
    offset = kw.get("norm_add_unit_offset", True)
    written = to_x_transformers_state_dict(ours, version=2, norm_add_unit_offset=offset)
    X = xt2()
    fresh = X.TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=getattr(X, kind)(verbose=False, **kw)
    )
    fresh.load_state_dict(written, strict=True)
    assert max_logit_diff(ours, fresh.eval(), tokens()) <= TOL


def test_unit_offset_is_applied_to_stack_norms_only() -> None:
    """2.x stores stack norm gains minus one; the post-activation LayerNorm keeps its gain."""
    ours = af.TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=af.Decoder(**explicit(dict(ff_post_act_ln=True)))
    )
    perturb_(ours)
    sd = to_x_transformers_state_dict(ours, version=2)
    mine = ours.state_dict()
    pre = mine["attn_layers.layers.0.pre_norm.weight"]
    assert torch.equal(sd["attn_layers.layers.0.0.0.gamma"], pre - 1)
    final = mine["attn_layers.final_norm.weight"]
    assert torch.equal(sd["attn_layers.final_norm.gamma"], final - 1)
    act = mine["attn_layers.layers.1.branch.post_act_norm.weight"]
    assert torch.equal(sd["attn_layers.layers.1.1.ff.1.gamma"], act)


def test_version_1_keeps_the_128_layout_and_points_2x_checkpoints_to_version_2() -> None:
    ours, theirs = pair("Decoder", {})
    with pytest.raises(ValueError, match=r"load a 2\.x checkpoint with version=2"):
        load_x_transformers_state_dict(ours, theirs.state_dict())
    assert "attn_layers.final_norm.weight" in to_x_transformers_state_dict(ours)


def test_bad_version_and_offset_arguments() -> None:
    ours, theirs = pair("Decoder", {})
    with pytest.raises(ValueError, match=r"version must be 1 .* or 2 .*, got 3"):
        load_x_transformers_state_dict(ours, theirs.state_dict(), version=3)
    with pytest.raises(TypeError, match="norm_add_unit_offset must be a bool, got str"):
        to_x_transformers_state_dict(ours, version=2, norm_add_unit_offset="yes")  # type: ignore[arg-type]


def test_default_rotary_dim_differs_and_a_mismatch_is_reported() -> None:
    """2.x's default rotary dim is dim_head // 2 (8 here); anyformer's (1.28.x) is at least 32."""
    X = xt2()
    kw = dict(dim=32, depth=1, heads=2, attn_dim_head=32, rotary_pos_emb=True)
    theirs = X.TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=X.Decoder(verbose=False, **kw)
    )
    ours = af.TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=af.Decoder(**kw))
    with pytest.raises(ValueError, match=r"rotary_pos_emb\.inv_freq"):
        load_x_transformers_state_dict(ours, theirs.state_dict(), version=2)
