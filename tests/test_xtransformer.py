"""XTransformer: every enc_*/dec_* keyword reaches its wrapper or its stack, or raises."""

import pytest
import torch
from torch import nn

from anyformer import XTransformer

BASE = dict(
    dim=32,
    enc_num_tokens=40,
    enc_depth=1,
    enc_heads=2,
    enc_max_seq_len=16,
    dec_num_tokens=50,
    dec_depth=2,
    dec_heads=2,
    dec_max_seq_len=16,
)


def test_wrapper_keywords_reach_each_side():
    model = XTransformer(
        **BASE,
        dec_post_emb_norm=True,  # x-transformers 1.28.2: AssertionError (unrecognized kwargs)
        enc_emb_dropout=0.25,
        dec_use_abs_pos_emb=False,
        enc_l2norm_embed=True,
    )
    decoder = model.decoder.net
    assert isinstance(decoder.post_emb_norm, nn.LayerNorm)
    assert isinstance(model.encoder.post_emb_norm, nn.Identity)
    assert model.encoder.emb_dropout.p == 0.25
    assert decoder.emb_dropout.p == 0.0
    assert decoder.pos_emb is None and model.encoder.pos_emb is not None
    assert model.encoder.config.l2norm_embed and not decoder.config.l2norm_embed


def test_stack_keywords_reach_each_side():
    model = XTransformer(
        **BASE, enc_attn_flash=True, dec_ff_glu=True, dec_cross_attn_dim_head=16, enc_pre_norm=False
    )
    enc, dec = model.encoder.attn_layers.config, model.decoder.net.attn_layers.config
    assert enc.attention.flash and not dec.attention.flash
    assert dec.feedforward.glu and not enc.feedforward.glu
    assert dec.cross_attention.dim_head == 16 and dec.attention.dim_head == 64
    assert not enc.pre_norm and dec.pre_norm
    assert dec.cross_attend and dec.causal and not enc.causal


def test_decoder_head_and_encoder_without_head():
    model = XTransformer(**BASE)
    assert isinstance(model.encoder.to_logits, nn.Identity)
    assert model.decoder.net.to_logits.weight.shape == (50, 32)
    src = torch.randint(0, 40, (2, 16))
    assert model.encoder(src).shape == (2, 16, 32)  # embeddings, no head


def test_unknown_and_misplaced_keywords():
    with pytest.raises(TypeError, match="Did you mean 'dec_post_emb_norm'"):
        XTransformer(**BASE, dec_post_emb_nrom=True)
    with pytest.raises(TypeError, match="enc_ or dec_ prefix"):
        XTransformer(**BASE, depth=2)
    with pytest.raises(TypeError, match="'dec_cross_attend' is not accepted"):
        XTransformer(**BASE, dec_cross_attend=False)
    # enc_num_memory_tokens reaches the encoder wrapper (x-transformers' whitelist)
    assert XTransformer(**BASE, enc_num_memory_tokens=2).encoder.memory_tokens.shape == (2, 32)


def test_cross_attn_tokens_dropout_keeps_a_fraction_in_training():
    model = XTransformer(**BASE, cross_attn_tokens_dropout=0.5)
    seen = []
    cross = model.decoder.net.attn_layers.layers[1].branch
    handle = cross.qkv.register_forward_hook(lambda mod, args, out: seen.append(args[1].shape[1]))
    src, tgt = torch.randint(0, 40, (2, 16)), torch.randint(0, 50, (2, 9))
    model.train()(src, tgt)
    model.eval()(src, tgt)
    handle.remove()
    assert seen == [8, 16]


def test_side_errors_name_the_keywords_as_written():
    """Each side's parser gets its prefix and names keywords with it; words that are not
    keywords stay as they are (the old regex rewrite of the message made 'key/value heads'
    'key/value dec_heads')."""
    with pytest.raises(
        ValueError, match=r"TransformerWrapper: dec_emb_dropout must be in \[0, 1\)"
    ):
        XTransformer(**BASE, dec_emb_dropout=1.5)
    with pytest.raises(ValueError, match="enc_use_scalenorm=True and enc_use_rmsnorm=True"):
        XTransformer(**BASE, enc_use_rmsnorm=True, enc_use_scalenorm=True)
    with pytest.raises(ValueError) as info:
        XTransformer(
            **BASE,
            dec_attn_qk_norm=True,
            dec_attn_qk_norm_dim_scale=True,
            dec_attn_kv_heads=1,
            dec_rotary_pos_emb=True,
        )
    message = str(info.value)
    assert "dec_attn_qk_norm_dim_scale=True with dec_attn_kv_heads=1" in message
    assert "(fewer key/value heads than dec_heads=2)" in message
    assert "dec_rotary_pos_emb" in message
    with pytest.raises(ValueError, match="dec_attn_dropout must be in"):  # a prefixed group
        XTransformer(**BASE, dec_attn_dropout=2.0)
    # outside an XTransformer, the same errors name the keywords without a side
    with pytest.raises(ValueError, match="AttentionLayers: use_scalenorm=True and use_rmsnorm"):
        XTransformer(**BASE, enc_use_rmsnorm=True).encoder.attn_layers.__class__(
            dim=8, depth=1, use_rmsnorm=True, use_scalenorm=True
        )
