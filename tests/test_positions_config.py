"""Positional keywords: combinations that cannot work raise naming both options, defaults follow
x-transformers 1.28.2 (checked against it), and the forward keywords seq_start_pos and
self_attn_kv_mask compute what 1.28.2 computes."""

from __future__ import annotations

import pytest
import torch
import x_transformers as xt

from anyformer import Decoder, Encoder, TransformerWrapper
from anyformer.convert import to_x_transformers_state_dict

BASE = dict(dim=16, depth=1, heads=2, attn_dim_head=8)


@pytest.mark.parametrize(
    "keywords,message",
    [
        (dict(alibi_pos_bias=True, rel_pos_bias=True), "alibi_pos_bias and rel_pos_bias cannot"),
        (dict(rel_pos_bias=True, dynamic_pos_bias=True), "rel_pos_bias and dynamic_pos_bias"),
        (dict(rotary_emb_dim=16), "rotary_emb_dim was set but rotary_pos_emb=False"),
        (dict(rotary_theta=5e5), "rotary_theta was set but rotary_pos_emb=False"),
        (dict(rotary_pos_emb=True, rotary_emb_dim=7), "rotary_emb_dim must be an even int"),
        (dict(rotary_pos_emb=True, rotary_emb_dim=16), "rotary_emb_dim must be <= attn_dim_head=8"),
        (dict(rotary_pos_emb=True, rotary_interpolation_factor=0.5), "must be >= 1, got 0.5"),
        (dict(alibi_num_heads=1), "alibi_num_heads was set but alibi_pos_bias=False"),
        (dict(alibi_pos_bias=True, alibi_num_heads=3), "alibi_num_heads must be <= heads=2"),
        (
            dict(rel_pos_bias=True, rel_pos_num_buckets=64, rel_pos_max_distance=32),
            "rel_pos_num_buckets must be in \\[2, rel_pos_max_distance=32\\], got 64",
        ),
        (dict(attn_rotary_embed_values=True), "attn_rotary_embed_values=True needs rotary_pos_emb"),
        (dict(dynamic_pos_bias=True, dim=2, heads=1), "dynamic_pos_bias needs dim >= 4"),
    ],
)
def test_impossible_combinations_raise_at_construction(keywords, message):
    with pytest.raises(ValueError, match=message):
        Decoder(**{**BASE, **keywords})


def test_xpos_needs_a_causal_stack():
    with pytest.raises(ValueError, match="rotary_xpos=True needs a causal stack"):
        Encoder(**BASE, rotary_xpos=True)


def test_typo_in_a_positional_keyword_suggests_the_name():
    with pytest.raises(TypeError, match="Did you mean 'rotary_pos_emb'"):
        Decoder(**BASE, rotary_pos_embb=True)


@pytest.mark.parametrize(
    "keywords",
    [
        dict(),
        dict(rotary_pos_emb=True),
        dict(rotary_xpos=True),
        dict(rel_pos_bias=True),
        dict(alibi_pos_bias=True),
        dict(dynamic_pos_bias=True),
        dict(rotary_pos_emb=True, disable_abs_pos_emb=False),
        dict(alibi_pos_bias=True, disable_abs_pos_emb=True),
    ],
)
def test_disable_abs_pos_emb_defaults_as_x_transformers(keywords):
    ours = TransformerWrapper(num_tokens=8, max_seq_len=16, attn_layers=Decoder(**BASE, **keywords))
    theirs = xt.Decoder(**BASE, **keywords)
    assert ours.attn_layers.disable_abs_pos_emb == theirs.disable_abs_pos_emb
    assert (ours.pos_emb is None) == theirs.disable_abs_pos_emb


def _pair(keywords: dict, max_seq_len: int = 16):
    torch.manual_seed(0)
    ours = TransformerWrapper(
        num_tokens=32, max_seq_len=max_seq_len, attn_layers=Decoder(**BASE, **keywords)
    ).eval()
    theirs = xt.TransformerWrapper(
        num_tokens=32, max_seq_len=max_seq_len, attn_layers=xt.Decoder(**BASE, **keywords)
    ).eval()
    theirs.load_state_dict(to_x_transformers_state_dict(ours))
    return ours, theirs


@pytest.mark.parametrize(
    "keywords", [dict(), dict(alibi_pos_bias=True), dict(rel_pos_bias=True)], ids=str
)
def test_seq_start_pos_equals_x_transformers_on_the_real_tokens(keywords):
    # (1.28.2 crashes on seq_start_pos with scaled_sinu_pos_emb: its einsum expects 1-D positions)
    ours, theirs = _pair(keywords)
    x = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(1))
    start = torch.tensor([0, 4])
    with torch.no_grad():
        got, expected = ours(x, seq_start_pos=start), theirs(x, seq_start_pos=start)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1, 4:], expected[1, 4:], atol=1e-5, rtol=0)


def test_self_attn_kv_mask_equals_x_transformers():
    ours, theirs = _pair(dict(alibi_pos_bias=True), max_seq_len=0)
    x = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(2))
    kv_mask = torch.ones(2, 9, dtype=torch.bool)
    kv_mask[0, 2] = kv_mask[1, :3] = False
    with torch.no_grad():
        got = ours(x, self_attn_kv_mask=kv_mask)
        expected = theirs(x, self_attn_kv_mask=kv_mask)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, :3] = False  # 1.28.2 lets queries with no visible key attend to every key
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=0)


def test_seq_start_pos_is_checked():
    model = TransformerWrapper(num_tokens=8, max_seq_len=16, attn_layers=Decoder(**BASE))
    x = torch.randint(0, 8, (2, 5))
    with pytest.raises(ValueError, match=r"seq_start_pos must be a \(2,\) integer tensor"):
        model(x, seq_start_pos=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"seq_start_pos must lie in \[0, 5\).*\[0, 5\]"):
        model(x, seq_start_pos=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="cannot be combined with prepend_embeds"):
        model(x, seq_start_pos=torch.tensor([0, 1]), prepend_embeds=torch.randn(2, 1, 16))
