"""Every model can be rebuilt from its resolved configuration: Cls.from_config(model.config_dict())."""

from __future__ import annotations

import json

import pytest
import torch

from anyformer import (
    CrossAttender,
    Decoder,
    Encoder,
    PrefixDecoder,
    TransformerWrapper,
    ViTransformerWrapper,
    XTransformer,
)
from anyformer.stack import AttentionLayers


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _rebuilt(model):
    cfg = json.loads(json.dumps(model.config_dict()))  # through JSON, as a saved folder would
    clone = type(model).from_config(cfg)
    assert _shapes(clone) == _shapes(model)
    assert [type(m).__name__ for m in clone.modules()] == [
        type(m).__name__ for m in model.modules()
    ]
    clone.load_state_dict(model.state_dict())
    return clone.eval()


TOKEN_MODELS = {
    "decoder": lambda: TransformerWrapper(
        num_tokens=50,
        max_seq_len=16,
        tie_embedding=True,
        embed_num_tokens={"type": 2},
        attn_layers=Decoder(dim=16, depth=2, heads=2, ff_glu=True, attn_dim_head=8, norm_eps=1e-6),
    ),
    "encoder": lambda: TransformerWrapper(
        num_tokens=50,
        max_seq_len=16,
        emb_dim=8,
        scaled_sinu_pos_emb=True,
        attn_layers=Encoder(dim=16, depth=1, heads=2, pre_norm=False, ff_no_bias=True),
    ),
    "hf_options": lambda: TransformerWrapper(
        num_tokens=50,
        max_seq_len=16,
        post_emb_norm=True,
        post_emb_norm_bias=True,
        post_emb_norm_eps=1e-12,
        attn_layers=Decoder(
            dim=16,
            depth=1,
            heads=2,
            norm_bias=True,
            attn_qkv_bias=True,
            attn_out_bias=True,
            ff_inner_dim=24,
            ff_gelu_tanh=True,
        ),
    ),
    "attention": lambda: TransformerWrapper(
        num_tokens=50,
        max_seq_len=16,
        attn_layers=Decoder(
            dim=16,
            depth=2,
            heads=4,
            attn_dim_head=4,
            attn_kv_heads=2,
            attn_qk_norm=True,
            attn_qk_norm_dim_scale=True,
            attn_num_mem_kv=2,
            attn_add_zero_kv=True,
            attn_talking_heads=True,
            attn_head_scale=True,
            attn_gate_values=True,
            attn_gate_value_heads=True,
            attn_tensor_product=True,
            attn_on_attn=True,
            residual_attn=True,
            attn_max_attend_past=3,
            attn_sparse_topk=3,
        ),
    ),
    "prefix": lambda: TransformerWrapper(
        num_tokens=50, max_seq_len=16, attn_layers=PrefixDecoder(dim=16, depth=1, heads=2)
    ),
    "structure": lambda: TransformerWrapper(
        num_tokens=50,
        max_seq_len=16,
        num_memory_tokens=2,
        max_mem_len=8,
        shift_mem_down=1,
        attn_layers=Decoder(
            dim=16,
            depth=2,
            heads=2,
            use_rmsnorm=True,
            sandwich_norm=True,
            macaron=True,
            gate_residual=True,
            scale_residual=True,
            shift_tokens=(1, 0, 2, 0, 0, 1),
            layers_execute_order=(0, 1, 2, 3, 4, 5, 1, 2),
            layer_dropout=(0.0, 0.1, 0.0, 0.0, 0.2, 0.0),
        ),
    ),
    "resi_dual": lambda: TransformerWrapper(
        num_tokens=50,
        max_seq_len=16,
        num_memory_tokens=1,
        memory_tokens_interspersed_every=4,
        attn_layers=Decoder(
            dim=16,
            depth=3,
            heads=2,
            resi_dual=True,
            resi_dual_scale=0.5,
            use_scalenorm=True,
            custom_layers=("a", "f", "f", "a", "f"),
            scale_residual_constant=0.5,
            zero_init_branch_output=True,
        ),
    ),
    "rotary": lambda: TransformerWrapper(
        num_tokens=50,
        max_seq_len=16,
        attn_layers=Decoder(
            dim=16,
            depth=2,
            heads=2,
            attn_dim_head=8,
            rotary_xpos=True,
            rotary_emb_dim=4,
            rotary_xpos_scale_base=64,
            rotary_interpolation_factor=2.0,
            rotary_base_rescale_factor=2.0,
            rotary_theta=500.0,
            attn_rotary_embed_values=True,
            rel_pos_bias=True,
            rel_pos_num_buckets=8,
            rel_pos_max_distance=16,
            disable_abs_pos_emb=False,
        ),
    ),
    "alibi": lambda: TransformerWrapper(
        num_tokens=50,
        max_seq_len=0,
        attn_layers=Decoder(
            dim=16, depth=1, heads=4, attn_kv_heads=2, alibi_pos_bias=True, alibi_num_heads=3
        ),
    ),
    "dynamic_bias": lambda: TransformerWrapper(
        num_tokens=50,
        max_seq_len=16,
        attn_layers=Encoder(
            dim=16,
            depth=1,
            heads=2,
            dynamic_pos_bias=True,
            dynamic_pos_bias_log_distance=True,
            dynamic_pos_bias_mlp_depth=3,
            dynamic_pos_bias_norm=True,
        ),
    ),
    "cross": lambda: TransformerWrapper(
        num_tokens=50,
        max_seq_len=16,
        attn_layers=Decoder(
            dim=16,
            depth=1,
            heads=2,
            cross_attend=True,
            cross_attn_dim_context=8,
            cross_attn_dim_head=4,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(TOKEN_MODELS))
def test_token_model_round_trip(name):
    torch.manual_seed(0)
    model = TOKEN_MODELS[name]().eval()
    clone = _rebuilt(model)
    assert type(clone.attn_layers) is type(model.attn_layers)
    assert clone.config == model.config and clone.attn_layers.config == model.attn_layers.config
    x = torch.randint(0, 50, (2, 16))
    kwargs = {}
    if name == "decoder":
        kwargs["embed_ids"] = {"type": torch.randint(0, 2, (2, 16))}
    if name == "cross":
        kwargs["context"] = torch.randn(2, 5, 8)
    if name == "prefix":
        kwargs["prefix_attn_len"] = 4
    assert torch.equal(clone(x, **kwargs), model(x, **kwargs))
    if name == "decoder":  # tying survives the rebuild
        assert clone.to_logits.weight is clone.token_emb.emb.weight


def test_stack_round_trip_keeps_subclass():
    for cls in (Encoder, Decoder, PrefixDecoder, CrossAttender):
        stack = cls(dim=16, depth=1, heads=2)
        clone = AttentionLayers.from_config(stack.config_dict())
        assert type(clone) is cls
        assert _shapes(clone) == _shapes(stack)


def test_vit_round_trip():
    torch.manual_seed(0)
    vit = ViTransformerWrapper(
        image_size=16,
        patch_size=8,
        num_classes=3,
        num_register_tokens=2,
        attn_layers=Encoder(dim=16, depth=1, heads=2),
    ).eval()
    img = torch.randn(2, 3, 16, 16)
    assert torch.equal(_rebuilt(vit)(img), vit(img))


def test_xtransformer_round_trip():
    torch.manual_seed(0)
    model = XTransformer(
        dim=16,
        tie_token_emb=True,
        enc_num_tokens=30,
        enc_depth=1,
        enc_heads=2,
        enc_max_seq_len=8,
        dec_num_tokens=30,
        dec_depth=1,
        dec_heads=2,
        dec_max_seq_len=8,
    ).eval()
    clone = _rebuilt(model)
    assert clone.decoder.net.token_emb is clone.encoder.token_emb
    src, tgt = torch.randint(0, 30, (2, 8)), torch.randint(0, 30, (2, 9))
    assert torch.equal(clone(src, tgt), model(src, tgt))


def test_from_config_errors():
    model = TOKEN_MODELS["prefix"]()
    cfg = model.config_dict()
    with pytest.raises(ValueError, match="configuration of class 'TransformerWrapper'"):
        ViTransformerWrapper.from_config(cfg)
    bad = json.loads(json.dumps(cfg))
    bad["attn_layers"]["attention"]["warp_drive"] = True
    with pytest.raises(ValueError, match=r"unknown options \['warp_drive'\]"):
        TransformerWrapper.from_config(bad)
    bad = json.loads(json.dumps(cfg))
    bad["attn_layers"]["class"] = "Transformer9000"
    with pytest.raises(ValueError, match="'class' must name a AttentionLayers class"):
        TransformerWrapper.from_config(bad)
