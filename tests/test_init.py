"""Initialisation is a pass of its own: a model built on the meta device, then
reset_parameters(), is initialised like one built eagerly."""

from __future__ import annotations

import math

import pytest
import torch

from anyformer import (
    ContinuousTransformerWrapper,
    Decoder,
    Encoder,
    TransformerWrapper,
    ViTransformerWrapper,
    XTransformer,
)

BUILDERS = {
    "decoder": lambda: TransformerWrapper(
        num_tokens=512,
        max_seq_len=64,
        tie_embedding=True,
        attn_layers=Decoder(
            dim=64,
            depth=2,
            heads=4,
            ff_glu=True,
            ff_glu_mult_bias=True,
            attn_zero_init_output=True,
            ff_post_act_ln=True,
        ),
    ),
    "sinusoidal": lambda: TransformerWrapper(
        num_tokens=512,
        max_seq_len=64,
        scaled_sinu_pos_emb=True,
        post_emb_norm=True,
        attn_layers=Encoder(dim=64, depth=1, heads=4, ff_zero_init_output=True),
    ),
    "hf_options": lambda: TransformerWrapper(
        num_tokens=512,
        max_seq_len=64,
        post_emb_norm=True,
        post_emb_norm_bias=True,
        embed_num_tokens={"token_type": 2},
        attn_layers=Encoder(
            dim=64,
            depth=1,
            heads=4,
            pre_norm=False,
            norm_bias=True,
            attn_qkv_bias=True,
            attn_out_bias=True,
            ff_inner_dim=96,
            ff_gelu_tanh=True,
        ),
    ),
    "attention": lambda: TransformerWrapper(
        num_tokens=512,
        max_seq_len=64,
        attn_layers=Decoder(
            dim=64,
            depth=2,
            heads=4,
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
        ),
    ),
    "structure": lambda: TransformerWrapper(
        num_tokens=512,
        max_seq_len=64,
        num_memory_tokens=4,
        attn_layers=Decoder(
            dim=64,
            depth=2,
            heads=4,
            use_rmsnorm=True,
            sandwich_norm=True,
            macaron=True,
            gate_residual=True,
            scale_residual=True,
            shift_tokens=1,
            zero_init_branch_output=True,
        ),
    ),
    "positions": lambda: TransformerWrapper(
        num_tokens=512,
        max_seq_len=64,
        attn_layers=Decoder(dim=64, depth=2, heads=4, rotary_xpos=True, rel_pos_bias=True),
    ),
    "alibi": lambda: TransformerWrapper(
        num_tokens=512,
        max_seq_len=0,
        attn_layers=Decoder(dim=64, depth=1, heads=6, attn_kv_heads=2, alibi_pos_bias=True),
    ),
    "dynamic_bias": lambda: TransformerWrapper(
        num_tokens=512,
        max_seq_len=64,
        attn_layers=Encoder(
            dim=64, depth=1, heads=4, dynamic_pos_bias=True, dynamic_pos_bias_norm=True
        ),
    ),
    "continuous": lambda: ContinuousTransformerWrapper(
        max_seq_len=64,
        dim_in=32,
        dim_out=16,
        num_memory_tokens=4,
        attn_layers=Decoder(dim=64, depth=1, heads=4, use_scalenorm=True, weight_tie_layers=True),
    ),
    "l2norm": lambda: TransformerWrapper(
        num_tokens=512,
        max_seq_len=64,
        l2norm_embed=True,
        attn_layers=Decoder(dim=64, depth=1, heads=4),
    ),
    "vit": lambda: ViTransformerWrapper(
        image_size=32,
        patch_size=8,
        num_classes=10,
        num_register_tokens=4,
        attn_layers=Encoder(dim=64, depth=1, heads=4),
    ),
    "xtransformer": lambda: XTransformer(
        dim=64,
        tie_token_emb=True,
        enc_num_tokens=256,
        enc_depth=1,
        enc_max_seq_len=32,
        dec_num_tokens=256,
        dec_depth=1,
        dec_max_seq_len=32,
    ),
}


def _stats_agree(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """Same distribution: constants exactly, random tensors within sampling error."""
    assert a.shape == b.shape, name
    assert torch.isfinite(b).all(), name
    if a.numel() == 1 or a.std() == 0:
        assert torch.equal(a, b), name
        return
    n = a.numel()
    sa, sb = a.std().item(), b.std().item()
    assert abs(a.mean().item() - b.mean().item()) < 6 * sa / math.sqrt(n) + 1e-12, name
    assert abs(sb / sa - 1) < 6 / math.sqrt(n) + 0.05, name


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_meta_device_then_reset_matches_eager_init(kind):
    torch.manual_seed(0)
    eager = BUILDERS[kind]()
    with torch.device("meta"):
        lazy = BUILDERS[kind]()
    assert all(p.is_meta for p in lazy.parameters())
    lazy = lazy.to_empty(device="cpu")
    torch.manual_seed(1)
    lazy.reset_parameters()
    eager_state = eager.state_dict(keep_vars=True)
    for name, tensor in lazy.state_dict(keep_vars=True).items():
        _stats_agree(name, eager_state[name].detach(), tensor.detach())
    for (name, buf), (_, eager_buf) in zip(lazy.named_buffers(), eager.named_buffers()):
        assert torch.equal(buf, eager_buf), name  # computed buffers (not saved) are recomputed


def test_reset_keeps_tied_weights_and_zero_inits():
    model = BUILDERS["decoder"]()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    model.reset_parameters()
    emb = model.token_emb.emb.weight
    assert model.to_logits.weight is emb
    assert abs(emb.std().item() - 0.02) < 0.002  # the embedding's N(0, 0.02) init, not the head's
    for block in model.attn_layers.layers:
        if block.layer_type == "a":
            assert torch.count_nonzero(block.branch.to_out.weight) == 0
        else:
            assert torch.equal(block.branch.act.mult_bias, torch.ones(256))
    assert torch.equal(model.attn_layers.final_norm.weight, torch.ones(64))
