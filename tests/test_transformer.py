"""TransformerWrapper: capabilities report and resolved configuration."""

import json

import pytest
import torch

from anyformer import Decoder, Encoder, TransformerWrapper


def test_capabilities_of_a_flash_decoder():
    model = TransformerWrapper(
        num_tokens=32,
        max_seq_len=16,
        attn_layers=Decoder(dim=16, depth=1, heads=2, attn_flash=True),
    )
    assert model.capabilities() == {
        "fused_attention": True,
        "kv_cache": True,
        "kv_cache_beyond_max_seq_len": False,
        "packed_documents": True,
        "attention": (
            {"layer": 0, "type": "a", "path": "fused", "explicit_because": (), "kv_cache": True},
        ),
    }


def test_capabilities_of_an_encoder_without_positions():
    model = TransformerWrapper(
        num_tokens=32, max_seq_len=16, use_abs_pos_emb=False, attn_layers=Encoder(dim=16, depth=1)
    )
    # without flash=True the fused kernel still runs wherever the math allows
    assert model.capabilities() == {
        "fused_attention": True,
        "kv_cache": False,
        "kv_cache_beyond_max_seq_len": False,
        "packed_documents": True,
        "attention": (
            {"layer": 0, "type": "a", "path": "fused", "explicit_because": (), "kv_cache": False},
        ),
    }


def test_cross_attention_without_flash_is_reported():
    model = TransformerWrapper(
        num_tokens=32,
        max_seq_len=16,
        use_abs_pos_emb=False,
        attn_layers=Decoder(
            dim=16,
            depth=1,
            heads=2,
            cross_attend=True,
            attn_flash=True,
            cross_attn_flash=False,
            cross_attn_talking_heads=True,
        ),
    )
    caps = model.capabilities()
    assert caps["fused_attention"] is False
    assert [(p["type"], p["path"]) for p in caps["attention"]] == [
        ("a", "fused"),
        ("c", "explicit"),
    ]
    assert caps["attention"][1]["explicit_because"] == ("talking_heads=True",)
    assert caps["kv_cache_beyond_max_seq_len"] is True


def test_config_dict_round_trips_through_json():
    model = TransformerWrapper(
        num_tokens=32, max_seq_len=16, attn_layers=Decoder(dim=16, depth=2, heads=2, ff_glu=True)
    )
    d = json.loads(json.dumps(model.config_dict()))
    assert d["attn_layers"]["depth"] == 2
    assert d["attn_layers"]["feedforward"]["glu"] is True
    assert d["attn_layers"]["attention"]["dim_head"] == 64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("flash", [True, False])
def test_autocast_low_precision_matches_float32(dtype, flash):
    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=64,
        max_seq_len=32,
        attn_layers=Decoder(dim=32, depth=2, heads=2, attn_flash=flash, cross_attend=True),
    ).eval()
    x = torch.randint(0, 64, (2, 10))
    context = torch.randn(2, 4, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :3] = False
    reference = model(x, context=context, mask=mask)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x, context=context, mask=mask)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().max().item() < 0.1


def test_a_prefix_decoder_stack_takes_its_forward_keywords_through_the_wrapper():
    """The wrapper accepts what the stack's forward accepts, read from every forward of the
    stack's class (a PrefixDecoder's own and AttentionLayers'); it used to read only
    PrefixDecoder.forward and refused self_attn_kv_mask, context, cache_age, ..."""
    from anyformer import PrefixDecoder

    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=16, max_seq_len=8, attn_layers=PrefixDecoder(dim=16, depth=1, heads=2)
    ).eval()
    x = torch.randint(0, 16, (2, 5))
    keep = torch.ones(2, 5, dtype=torch.bool)
    plain = model(x, prefix_attn_len=2)
    assert torch.equal(model(x, prefix_attn_len=2, self_attn_kv_mask=keep), plain)
    hidden = torch.tensor([[True, True, True, True, False]] * 2)
    assert torch.equal(
        model(x, prefix_attn_len=2, self_attn_kv_mask=hidden),
        model(x, prefix_attn_len=2, mask=hidden),
    )
    with pytest.raises(TypeError, match=r"'prefix_attn_lne'\. Did you mean 'prefix_attn_len'\?"):
        model(x, prefix_attn_lne=2)
