"""TransformerWrapper: capabilities report and resolved configuration."""

import json

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
    }


def test_capabilities_of_an_encoder_without_positions():
    model = TransformerWrapper(
        num_tokens=32, max_seq_len=16, use_abs_pos_emb=False, attn_layers=Encoder(dim=16, depth=1)
    )
    assert model.capabilities() == {
        "fused_attention": False,
        "kv_cache": False,
        "kv_cache_beyond_max_seq_len": False,
    }


def test_cross_attention_without_flash_is_reported():
    model = TransformerWrapper(
        num_tokens=32,
        max_seq_len=16,
        use_abs_pos_emb=False,
        attn_layers=Decoder(
            dim=16, depth=1, heads=2, cross_attend=True, attn_flash=True, cross_attn_flash=False
        ),
    )
    caps = model.capabilities()
    assert caps["fused_attention"] is False
    assert caps["kv_cache_beyond_max_seq_len"] is True


def test_config_dict_round_trips_through_json():
    model = TransformerWrapper(
        num_tokens=32, max_seq_len=16, attn_layers=Decoder(dim=16, depth=2, heads=2, ff_glu=True)
    )
    d = json.loads(json.dumps(model.config_dict()))
    assert d["attn_layers"]["depth"] == 2
    assert d["attn_layers"]["feedforward"]["glu"] is True
    assert d["attn_layers"]["attention"]["dim_head"] == 64
