"""The configuration layer: keyword names, collisions, later-milestone keywords, validation,
frozen config dataclasses, config_dict / option_docs, and every feedforward option's effect."""

import dataclasses
import json
import re

import pytest
import torch

from anyformer import (
    Attention,
    AutoregressiveWrapper,
    CrossAttender,
    Decoder,
    Encoder,
    FeedForward,
    TransformerWrapper,
    ViTransformerWrapper,
    XTransformer,
)
from anyformer.config import (
    AttentionConfig,
    FeedForwardConfig,
    StackConfig,
    WrapperConfig,
    option_docs,
)
from anyformer.config.later import LATER_ATTENTION, LATER_FORWARD, LATER_STACK, LATER_WRAPPER
from anyformer.nn.feedforward import GLU, ReluSquared

XT_KW = dict(
    dim=32,
    enc_num_tokens=64,
    enc_max_seq_len=16,
    enc_depth=1,
    enc_heads=2,
    dec_num_tokens=64,
    dec_max_seq_len=16,
    dec_depth=1,
    dec_heads=2,
)


def small_wrapper(**kwargs):
    return TransformerWrapper(
        num_tokens=64, max_seq_len=16, attn_layers=Decoder(dim=32, depth=1, heads=2), **kwargs
    )


def ff_of(stack, block=1):
    """The FeedForward module of a (self-attention, feedforward) stack's first block."""
    ff = stack.layers[block].branch
    assert isinstance(ff, FeedForward)
    return ff


# --------------------------------------------------------------------------------------------
# unknown / misspelled keywords: TypeError naming the keyword, with a did-you-mean


@pytest.mark.parametrize(
    ("build", "typo", "suggestion"),
    [
        (lambda: Decoder(dim=64, depth=2, attn_flsh=True), "attn_flsh", "attn_flash"),
        (lambda: Decoder(dim=64, depth=2, ff_gul=True), "ff_gul", "ff_glu"),
        (lambda: Encoder(dim=64, depth=2, ff_mlut=2), "ff_mlut", "ff_mult"),
        (
            lambda: Decoder(dim=64, depth=2, cross_attend=True, cross_attn_flsh=True),
            "cross_attn_flsh",
            "cross_attn_flash",
        ),
        (
            lambda: Decoder(dim=64, depth=2, cross_attend=True, cross_attn_dim_haed=16),
            "cross_attn_dim_haed",
            "cross_attn_dim_head",
        ),
        (lambda: Decoder(dim=64, depth=2, pre_nrom=False), "pre_nrom", "pre_norm"),
        (lambda: Encoder(dim=64, depth=2, cross_atend=True), "cross_atend", "cross_attend"),
        (lambda: small_wrapper(emb_dropuot=0.1), "emb_dropuot", "emb_dropout"),
        (lambda: small_wrapper(tie_embeding=True), "tie_embeding", "tie_embedding"),
        (lambda: XTransformer(**{**XT_KW, "enc_dept": 2}), "enc_dept", "enc_depth"),
        (
            lambda: XTransformer(**XT_KW, dec_emb_dropuot=0.1),
            "dec_emb_dropuot",
            "dec_emb_dropout",
        ),
        (lambda: XTransformer(**XT_KW, enc_attn_flsh=True), "enc_attn_flsh", "enc_attn_flash"),
        (lambda: XTransformer(**XT_KW, tie_tokn_emb=True), "tie_tokn_emb", "tie_token_emb"),
        (lambda: Attention(dim=32, flsh=True), "flsh", "flash"),
        (lambda: FeedForward(dim=32, gul=True), "gul", "glu"),
        (
            lambda: AutoregressiveWrapper(small_wrapper(), ignore_indx=0),
            "ignore_indx",
            "ignore_index",
        ),
    ],
)
def test_misspelled_keyword_suggests_closest(build, typo, suggestion):
    with pytest.raises(TypeError, match=re.escape(f"Did you mean {suggestion!r}?")) as info:
        build()
    assert f"{typo!r}" in str(info.value)
    assert "unexpected keyword argument" in str(info.value)


def test_unknown_keyword_without_close_match_has_no_suggestion():
    with pytest.raises(TypeError, match="'zzzqqq'") as info:
        Decoder(dim=64, depth=2, zzzqqq=1)
    assert "Did you mean" not in str(info.value)


def test_forward_keyword_typo_suggests_closest():
    model = small_wrapper()
    x = torch.randint(0, 64, (1, 4))
    with pytest.raises(TypeError, match=re.escape("'contxt'. Did you mean 'context'?")):
        model(x, contxt=torch.zeros(1, 2, 32))


def test_unprefixed_xtransformer_keyword_says_to_use_a_prefix():
    with pytest.raises(TypeError, match=r"'depth'.*enc_ or dec_ prefix"):
        XTransformer(**XT_KW, depth=2)


# --------------------------------------------------------------------------------------------
# collisions with arguments the stack supplies itself


@pytest.mark.parametrize(
    ("keyword", "advice"),
    [
        ("ff_dim", "ff_mult"),
        ("ff_dim_out", "dim"),
        ("attn_dim", "dim"),
        ("attn_heads", "heads"),
        ("attn_causal", "causal"),
        ("attn_dim_context", "cross_attn_dim_context"),
        ("cross_attn_heads", "heads"),
        ("cross_attn_causal", "causal"),
    ],
)
def test_colliding_keyword_is_a_clear_type_error(keyword, advice):
    with pytest.raises(TypeError) as info:
        Decoder(dim=64, depth=2, cross_attend=True, **{keyword: 8})
    message = str(info.value)
    assert "multiple values" not in message  # not Python's duplicate-argument crash
    assert f"{keyword!r}" in message, message  # names the keyword as written
    assert advice in message


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("enc_dim", 64), ("dec_dim", 64), ("dec_cross_attend", True), ("enc_attn_layers", None)],
)
def test_xtransformer_colliding_keyword(keyword, value):
    with pytest.raises(TypeError, match=re.escape(f"{keyword!r} is not accepted")):
        XTransformer(**XT_KW, **{keyword: value})


def test_xtransformer_missing_required_keyword_named():
    kw = {k: v for k, v in XT_KW.items() if k != "enc_max_seq_len"}
    with pytest.raises(TypeError, match=re.escape("'enc_max_seq_len'")):
        XTransformer(**kw)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: Encoder(dim=32, depth=1, causal=True), "causal"),
        (lambda: Decoder(dim=32, depth=1, causal=False), "causal"),
        (lambda: CrossAttender(dim=32, depth=1, cross_attend=True), "cross_attend"),
        (lambda: CrossAttender(dim=32, depth=1, only_cross=True), "only_cross"),
    ],
)
def test_preset_fixed_arguments_rejected(build, name):
    with pytest.raises(TypeError, match=name):
        build()


# --------------------------------------------------------------------------------------------
# seed keywords of later milestones: NotImplementedError naming the keyword


@pytest.mark.parametrize("name", sorted(LATER_STACK))
def test_later_stack_keyword_not_implemented(name):
    with pytest.raises(NotImplementedError, match=re.escape(f"{name!r}")):
        Decoder(dim=64, depth=2, **{name: True})


@pytest.mark.parametrize("prefix", ["attn_", "cross_attn_"])
@pytest.mark.parametrize("name", sorted(LATER_ATTENTION))
def test_later_attention_keyword_not_implemented(prefix, name):
    full = prefix + name
    with pytest.raises(NotImplementedError, match=re.escape(f"{full!r}")):
        Decoder(dim=64, depth=2, cross_attend=True, **{full: True})


@pytest.mark.parametrize("name", sorted(LATER_ATTENTION))
def test_later_attention_keyword_on_attention_module(name):
    with pytest.raises(NotImplementedError, match=re.escape(f"{name!r}")):
        Attention(dim=32, **{name: True})


@pytest.mark.parametrize("name", sorted(LATER_WRAPPER))
def test_later_wrapper_keyword_not_implemented(name):
    with pytest.raises(NotImplementedError, match=re.escape(f"{name!r}")):
        small_wrapper(**{name: 4})


@pytest.mark.parametrize("name", sorted(LATER_FORWARD))
def test_later_forward_keyword_not_implemented(name):
    model = small_wrapper()
    x = torch.randint(0, 64, (1, 4))
    with pytest.raises(NotImplementedError, match=re.escape(f"{name!r}")):
        model(x, **{name: None})
    with pytest.raises(NotImplementedError, match=re.escape(f"{name!r}")):
        model.attn_layers(torch.randn(1, 4, 32), **{name: None})


def test_named_later_examples():
    x = torch.randint(0, 64, (1, 4))
    model = small_wrapper()
    with pytest.raises(NotImplementedError, match="'rotary_pos_emb'"):
        Decoder(dim=64, depth=2, rotary_pos_emb=True)
    with pytest.raises(NotImplementedError, match="'use_rmsnorm'"):
        Decoder(dim=64, depth=2, use_rmsnorm=True)
    with pytest.raises(NotImplementedError, match="'num_memory_tokens'"):
        small_wrapper(num_memory_tokens=4)
    with pytest.raises(NotImplementedError, match="'return_mems'"):
        model(x, return_mems=True)
    with pytest.raises(NotImplementedError, match="'mems'"):
        model(x, mems=[torch.zeros(1, 2, 32)])
    with pytest.raises(NotImplementedError, match="'seq_start_pos'"):
        model(x, seq_start_pos=torch.tensor([0]))
    with pytest.raises(NotImplementedError, match="'rotary_pos_emb'"):
        XTransformer(**XT_KW, enc_rotary_pos_emb=True)


def test_later_attention_kv_heads_named_with_prefix():
    with pytest.raises(NotImplementedError, match=re.escape("'attn_kv_heads'")):
        Decoder(dim=64, depth=2, attn_kv_heads=2)


# --------------------------------------------------------------------------------------------
# type and range validation


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(ff_mult=0), ValueError, r"ff_mult must be > 0, got 0"),
        (dict(ff_mult=-1.5), ValueError, r"ff_mult.*got -1\.5"),
        (dict(ff_mult="4"), TypeError, r"ff_mult must be float, got '4' \(str\)"),
        (dict(ff_dropout=1.0), ValueError, r"ff_dropout.*got 1\.0"),
        (dict(attn_dropout=1.5), ValueError, r"attn_dropout must be in \[0, 1\), got 1\.5"),
        (dict(attn_dim_head=0), ValueError, r"attn_dim_head must be >= 1, got 0"),
        (dict(attn_flash=1), TypeError, r"attn_flash must be bool, got 1 \(int\)"),
        (dict(heads=0), ValueError, r"heads must be >= 1, got 0"),
        (dict(heads=True), TypeError, r"heads must be int, got True \(bool\)"),
        (dict(depth=0), ValueError, r"depth must be >= 1, got 0"),
        (dict(dim="64"), TypeError, r"dim must be int, got '64' \(str\)"),
        (dict(dim=64.0), TypeError, r"dim must be int, got 64\.0 \(float\)"),
        (dict(ff_glu="yes"), TypeError, r"ff_glu must be bool, got 'yes' \(str\)"),
        (dict(pre_norm=None), TypeError, r"pre_norm must be bool, got None"),
        (dict(only_cross=True), ValueError, r"only_cross=True needs cross_attend=True"),
        (
            dict(ff_relu_squared=True, ff_swish=True),
            ValueError,
            r"ff_relu_squared=True and ff_swish=True",
        ),
        (dict(ff_glu_mult_bias=True), ValueError, r"ff_glu_mult_bias=True needs ff_glu=True"),
    ],
)
def test_stack_value_validation(kwargs, error, pattern):
    args = dict(dim=64, depth=2)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        Encoder(**args)


def test_cross_attention_validation_names_the_cross_keyword():
    with pytest.raises(ValueError, match=r"cross_attn_dropout.*got 2\.0"):
        Decoder(dim=64, depth=2, cross_attend=True, cross_attn_dropout=2.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(emb_dropout=-0.1), ValueError, r"emb_dropout must be in \[0, 1\), got -0\.1"),
        (dict(emb_frac_gradient=0), ValueError, r"emb_frac_gradient must be in \(0, 1\], got 0"),
        (dict(emb_frac_gradient=1.5), ValueError, r"emb_frac_gradient.*got 1\.5"),
        (dict(emb_dim=0), ValueError, r"emb_dim must be >= 1, got 0"),
        (dict(logits_dim=0), ValueError, r"logits_dim must be >= 1, got 0"),
        (dict(tie_embedding=1), TypeError, r"tie_embedding must be bool, got 1 \(int\)"),
        (dict(embed_num_tokens=[1]), TypeError, r"embed_num_tokens must be dict, got \[1\]"),
        (dict(embed_num_tokens={"a": 0}), ValueError, r"embed_num_tokens.*'a': 0"),
        (
            dict(tie_embedding=True, emb_dim=16),
            ValueError,
            r"tie_embedding=True needs emb_dim == dim.*emb_dim=16, dim=32",
        ),
    ],
)
def test_wrapper_value_validation(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        small_wrapper(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(num_tokens=0, max_seq_len=8), r"num_tokens must be an int >= 1, got 0"),
        (dict(num_tokens=10, max_seq_len=-1), r"max_seq_len must be an int >= 0, got -1"),
    ],
)
def test_wrapper_required_value_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TransformerWrapper(**kwargs, attn_layers=Decoder(dim=32, depth=1))


def test_wrapper_attn_layers_type_checked():
    with pytest.raises(TypeError, match=r"attn_layers must be an AttentionLayers.*got Linear"):
        TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(patch_size=0), r"patch_size must be an int >= 1, got 0"),
        (dict(num_register_tokens=-1), r"num_register_tokens must be >= 0, got -1"),
        (dict(image_size=30), r"image_size \(30\) must be divisible by patch_size \(8\)"),
    ],
)
def test_vit_value_validation(kwargs, pattern):
    args = dict(image_size=32, patch_size=8, attn_layers=Encoder(dim=32, depth=1))
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        ViTransformerWrapper(**args)


def test_xtransformer_value_validation():
    with pytest.raises(ValueError, match=r"cross_attn_tokens_dropout must be in \[0, 1\), got 1"):
        XTransformer(**XT_KW, cross_attn_tokens_dropout=1.0)
    with pytest.raises(ValueError, match=r"tie_token_emb=True needs enc_num_tokens == dec_num"):
        XTransformer(**{**XT_KW, "dec_num_tokens": 32}, tie_token_emb=True)
    with pytest.raises(ValueError, match=r"emb_dropout must be in \[0, 1\), got 2"):
        XTransformer(**XT_KW, dec_emb_dropout=2.0)


# --------------------------------------------------------------------------------------------
# frozen, typed configs


def test_stack_config_reflects_keywords_and_is_frozen():
    model = small_wrapper()
    model = TransformerWrapper(
        num_tokens=64,
        max_seq_len=16,
        attn_layers=Decoder(
            dim=32, depth=3, heads=4, attn_flash=True, attn_dim_head=16, ff_glu=True, ff_mult=2
        ),
    )
    config = model.attn_layers.config
    assert isinstance(config, StackConfig)
    assert isinstance(config.attention, AttentionConfig)
    assert isinstance(config.feedforward, FeedForwardConfig)
    assert isinstance(model.config, WrapperConfig)
    assert (config.dim, config.depth, config.heads, config.causal) == (32, 3, 4, True)
    assert config.attention.flash is True
    assert config.attention.dim_head == 16
    assert config.feedforward.glu is True
    assert config.feedforward.mult == 2.0
    assert isinstance(config.feedforward.mult, float)
    assert config.layer_types == ("a", "f") * 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.heads = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.attention.flash = False
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.feedforward.glu = False
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.num_tokens = 3


def test_encoder_config_is_not_causal():
    assert Encoder(dim=32, depth=1).config.causal is False
    assert CrossAttender(dim=32, depth=2).config.layer_types == ("c", "f") * 2


def test_cross_attn_overrides_attn_for_cross_attention_only():
    heads = 2
    stack = Decoder(
        dim=32,
        depth=1,
        heads=heads,
        cross_attend=True,
        attn_dim_head=32,
        cross_attn_dim_head=16,
        attn_flash=True,
    )
    c = stack.config
    assert c.attention.dim_head == 32
    assert c.cross_attention.dim_head == 16
    assert c.cross_attention.flash is True  # inherited from attn_*
    assert stack.layer_types == ("a", "c", "f")
    self_attn, cross_attn = stack.layers[0].branch, stack.layers[1].branch
    assert self_attn.qkv.to_qkv.weight.shape == (3 * heads * 32, 32)
    assert cross_attn.qkv.to_qkv.weight.shape == (3 * heads * 16, 32)
    out = stack(torch.randn(1, 5, 32), context=torch.randn(1, 3, 32))
    assert out.shape == (1, 5, 32)


def test_config_dict_is_plain_and_resolved():
    model = TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        attn_layers=Decoder(dim=32, depth=2, heads=2, ff_glu=True, attn_dim_head=8),
    )
    d = model.config_dict()
    assert isinstance(d, dict)
    assert json.loads(json.dumps(d)) == d
    assert d["class"] == "TransformerWrapper"
    assert d["num_tokens"] == 256
    assert d["max_seq_len"] == 64
    assert d["attn_layers"]["class"] == "Decoder"
    assert d["attn_layers"]["feedforward"]["glu"] is True
    assert d["attn_layers"]["feedforward"]["mult"] == 4.0
    assert d["attn_layers"]["attention"]["dim_head"] == 8
    assert d["attn_layers"]["cross_attention"]["dim_head"] == 8
    assert d["attn_layers"]["causal"] is True
    assert d["attn_layers"]["depth"] == 2


def test_vit_config_dict():
    vit = ViTransformerWrapper(
        image_size=32,
        patch_size=8,
        num_classes=5,
        num_register_tokens=2,
        attn_layers=Encoder(dim=32, depth=1, heads=2, ff_swish=True),
    )
    d = vit.config_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["class"] == "ViTransformerWrapper"
    assert (d["image_size"], d["patch_size"], d["num_classes"]) == (32, 8, 5)
    assert d["num_register_tokens"] == 2
    assert d["attn_layers"]["class"] == "Encoder"
    assert d["attn_layers"]["feedforward"]["swish"] is True


@pytest.mark.parametrize("cls", [StackConfig, FeedForwardConfig, AttentionConfig, WrapperConfig])
def test_option_docs_cover_every_field(cls):
    docs = option_docs(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}
    for name, doc in docs.items():
        assert isinstance(doc, str) and doc.strip(), name


def test_option_docs_carry_paper_links():
    assert "2002.05202" in option_docs(FeedForwardConfig)["glu"]
    assert "2002.04745" in option_docs(StackConfig)["pre_norm"]
    assert "arxiv.org" in option_docs(AttentionConfig)["flash"]


# --------------------------------------------------------------------------------------------
# every feedforward keyword of the seed design is accepted and has a measurable effect


def test_ff_mult_sets_hidden_width():
    ff = ff_of(Encoder(dim=32, depth=1, ff_mult=3))
    assert ff.proj_in.weight.shape == (96, 32)
    assert ff.proj_out.weight.shape == (32, 96)
    ff = ff_of(Encoder(dim=32, depth=1, ff_mult=1.5))
    assert ff.proj_in.out_features == 48


def test_ff_default_is_gelu_mult_4():
    ff = ff_of(Encoder(dim=32, depth=1))
    assert ff.proj_in.out_features == 128
    assert isinstance(ff.act, torch.nn.GELU)
    assert ff.proj_in.bias is not None and ff.proj_out.bias is not None


def test_ff_glu_doubles_first_projection():
    plain = ff_of(Encoder(dim=32, depth=1))
    glu = ff_of(Encoder(dim=32, depth=1, ff_glu=True))
    assert glu.proj_in.out_features == 2 * plain.proj_in.out_features == 256
    assert glu.proj_out.in_features == 128
    assert isinstance(glu.act, GLU)
    # value * gelu(gate) on a known input
    x = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    act = GLU(torch.nn.GELU(), 2, mult_bias=False)
    expected = torch.tensor([[1.0, 2.0]]) * torch.nn.functional.gelu(torch.tensor([[0.5, -1.0]]))
    torch.testing.assert_close(act(x), expected)


def test_ff_glu_mult_bias_adds_learned_multiplier():
    ff = ff_of(Encoder(dim=32, depth=1, ff_glu=True, ff_glu_mult_bias=True))
    assert isinstance(ff.act.mult_bias, torch.nn.Parameter)
    assert ff.act.mult_bias.shape == (128,)
    assert torch.equal(ff.act.mult_bias.data, torch.ones(128))
    x = torch.randn(2, 256)
    before = ff.act(x)
    with torch.no_grad():
        ff.act.mult_bias.fill_(2.0)
    torch.testing.assert_close(ff.act(x), 2 * before)
    assert ff_of(Encoder(dim=32, depth=1, ff_glu=True)).act.mult_bias is None


def test_ff_swish_uses_silu():
    ff = ff_of(Encoder(dim=32, depth=1, ff_swish=True))
    assert isinstance(ff.act, torch.nn.SiLU)
    x = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    torch.testing.assert_close(ff.act(x), x * torch.sigmoid(x))
    swiglu = ff_of(Encoder(dim=32, depth=1, ff_swish=True, ff_glu=True))
    assert isinstance(swiglu.act.act, torch.nn.SiLU)


def test_ff_relu_squared_activation():
    ff = ff_of(Encoder(dim=32, depth=1, ff_relu_squared=True))
    assert isinstance(ff.act, ReluSquared)
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5, 3.0])
    torch.testing.assert_close(ff.act(x), torch.tensor([0.0, 0.0, 0.0, 2.25, 9.0]))
    gated = ff_of(Encoder(dim=32, depth=1, ff_relu_squared=True, ff_glu=True))
    assert isinstance(gated.act.act, ReluSquared)


def test_ff_post_act_ln_normalises_hidden():
    ff = ff_of(Encoder(dim=32, depth=1, ff_post_act_ln=True))
    assert isinstance(ff.post_act_norm, torch.nn.LayerNorm)
    assert ff.post_act_norm.normalized_shape == (128,)
    hidden = ff.post_act_norm(ff.act(ff.proj_in(torch.randn(3, 32))))
    torch.testing.assert_close(hidden.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)
    assert isinstance(ff_of(Encoder(dim=32, depth=1)).post_act_norm, torch.nn.Identity)


def test_ff_dropout_probability_and_effect():
    ff = ff_of(Encoder(dim=32, depth=1, ff_dropout=0.5))
    assert ff.dropout.p == 0.5
    x = torch.randn(4, 32)
    ff.eval()
    torch.testing.assert_close(ff(x), ff(x))
    ff.train()
    torch.manual_seed(0)
    a = ff(x)
    torch.manual_seed(1)
    b = ff(x)
    assert not torch.allclose(a, b)


def test_ff_no_bias_leaves_no_bias_parameters():
    for extra in ({}, {"ff_glu": True}, {"ff_glu": True, "ff_post_act_ln": True}):
        ff = ff_of(Encoder(dim=32, depth=1, ff_no_bias=True, **extra))
        assert ff.proj_in.bias is None and ff.proj_out.bias is None
        names = [n for n, _ in ff.named_parameters()]
        assert not [n for n in names if n.endswith(".bias")], names
    with_bias = ff_of(Encoder(dim=32, depth=1))
    assert sum(n.endswith(".bias") for n, _ in with_bias.named_parameters()) == 2


def test_ff_zero_init_output():
    ff = ff_of(Encoder(dim=32, depth=1, ff_zero_init_output=True))
    assert torch.count_nonzero(ff.proj_out.weight) == 0
    assert torch.count_nonzero(ff.proj_out.bias) == 0
    assert torch.count_nonzero(ff(torch.randn(2, 32))) == 0
    assert torch.count_nonzero(ff_of(Encoder(dim=32, depth=1)).proj_out.weight) > 0


def test_attn_zero_init_output():
    stack = Encoder(dim=32, depth=1, attn_zero_init_output=True)
    assert torch.count_nonzero(stack.layers[0].branch.to_out.weight) == 0


def test_attn_dropout_and_flash_reach_the_module():
    stack = Decoder(dim=32, depth=1, heads=2, attn_dropout=0.25, attn_flash=True)
    attn = stack.layers[0].branch
    assert attn.config.dropout == 0.25
    assert attn.config.flash is True
    assert attn.causal is True


def test_all_seed_ff_options_together_run():
    stack = Encoder(
        dim=32,
        depth=2,
        heads=2,
        ff_mult=2,
        ff_glu=True,
        ff_glu_mult_bias=True,
        ff_swish=True,
        ff_post_act_ln=True,
        ff_dropout=0.1,
        ff_no_bias=True,
        ff_zero_init_output=True,
    )
    ff = ff_of(stack)
    assert ff.proj_in.weight.shape == (128, 32)
    assert sorted(n for n, _ in ff.named_parameters()) == [
        "act.mult_bias",
        "post_act_norm.weight",
        "proj_in.weight",
        "proj_out.weight",
    ]
    assert stack(torch.randn(2, 5, 32)).shape == (2, 5, 32)


def test_standalone_modules_accept_config_options():
    ff = FeedForward(dim=32, mult=2, glu=True)
    assert ff.proj_in.weight.shape == (128, 32)
    assert FeedForward(dim=32, dim_out=8)(torch.randn(1, 3, 32)).shape == (1, 3, 8)
    attn = Attention(dim=32, heads=2, dim_head=8)
    assert attn.qkv.to_qkv.weight.shape == (48, 32)
    assert attn(torch.randn(1, 4, 32)).shape == (1, 4, 32)
    with pytest.raises(TypeError, match="either config= or keyword options"):
        FeedForward(dim=32, config=FeedForwardConfig(), glu=True)
