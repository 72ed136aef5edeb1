"""The configuration layer: keyword names, collisions, every seed keyword, validation,
frozen config dataclasses, config_dict / option_docs, and every feedforward option's effect."""

import dataclasses
import inspect
import json
import math
import re
import warnings

import pytest
import torch

from anyformer import (
    Attention,
    AttentionLayers,
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
# every keyword of the seed design: accepted, or NotImplementedError naming it
#
# The lists below are copied from the rows with "in seed" = yes of the reference
# (shared/reference/x-transformers.md, sections 1.1-1.9 and the forward tables of 2.4), grouped by
# the class that owns them there; they are written out here, not read from anyformer, so a
# keyword anyformer forgets fails. A keyword that a later issue has not implemented yet must
# raise NotImplementedError naming it (or a keyword it needs); it must never be an unknown
# keyword (TypeError) nor refuse a usage x-transformers 1.28.2 accepts. The test keeps passing as
# keywords land; what each keyword does is checked by its feature's own tests.

SEED_KEYWORDS = {
    "TransformerWrapper": (
        "attn_layers",
        "num_tokens",
        "max_seq_len",
        "emb_dim",
        "embed_num_tokens",
        "emb_dropout",
        "post_emb_norm",
        "use_abs_pos_emb",
        "scaled_sinu_pos_emb",
        "l2norm_embed",
        "emb_frac_gradient",
        "tie_embedding",
        "max_mem_len",
        "shift_mem_down",
        "num_memory_tokens",
        "memory_tokens_interspersed_every",
        "logits_dim",
        "attn_z_loss_weight",
    ),
    "AttentionLayers": (
        "dim",
        "depth",
        "heads",
        "causal",
        "cross_attend",
        "only_cross",
        "custom_layers",
        "layers_execute_order",
        "weight_tie_layers",
        "sandwich_coef",
        "par_ratio",
        "macaron",
        "residual_attn",
        "cross_residual_attn",
        "shift_tokens",
        "layer_dropout",
        "cross_attn_tokens_dropout",
        "disable_abs_pos_emb",
        "rotary_pos_emb",
        "rotary_emb_dim",
        "rotary_xpos",
        "rotary_xpos_scale_base",
        "rotary_interpolation_factor",
        "rotary_base_rescale_factor",
        "alibi_pos_bias",
        "alibi_num_heads",
        "rel_pos_bias",
        "rel_pos_num_buckets",
        "rel_pos_max_distance",
        "dynamic_pos_bias",
        "dynamic_pos_bias_log_distance",
        "dynamic_pos_bias_mlp_depth",
        "dynamic_pos_bias_norm",
        "pre_norm",
        "pre_norm_has_final_norm",
        "sandwich_norm",
        "resi_dual",
        "resi_dual_scale",
        "use_scalenorm",
        "use_rmsnorm",
        "use_simple_rmsnorm",
        "gate_residual",
        "scale_residual",
        "scale_residual_constant",
        "zero_init_branch_output",
    ),
    "Attention": (
        "dim",
        "dim_head",
        "heads",
        "dim_context",
        "causal",
        "value_dim_head",
        "flash",
        "one_kv_head",
        "kv_heads",
        "head_scale",
        "sparse_topk",
        "qk_norm",
        "qk_norm_groups",
        "qk_norm_scale",
        "qk_norm_dim_scale",
        "num_mem_kv",
        "add_zero_kv",
        "on_attn",
        "gate_values",
        "swiglu_values",
        "gate_value_heads",
        "dropout",
        "zero_init_output",
        "onnxable",
        "talking_heads",
        "shared_kv",
        "tensor_product",
        "rotary_embed_values",
        "max_attend_past",
    ),
    "FeedForward": (
        "dim",
        "dim_out",
        "mult",
        "glu",
        "glu_mult_bias",
        "swish",
        "relu_squared",
        "post_act_ln",
        "dropout",
        "no_bias",
        "zero_init_output",
    ),
    "ViTransformerWrapper": (
        "image_size",
        "patch_size",
        "attn_layers",
        "channels",
        "num_classes",
        "post_emb_norm",
        "num_register_tokens",
        "emb_dropout",
    ),
    "XTransformer": (
        "dim",
        "tie_token_emb",
        "ignore_index",
        "pad_value",
        "cross_attn_tokens_dropout",
    ),
    "TransformerWrapper.forward": (
        "x",
        "return_embeddings",
        "return_logits_and_embeddings",
        "return_intermediates",
        "mask",
        "return_mems",
        "return_attn",
        "mems",
        "mem_masks",
        "pos",
        "prepend_embeds",
        "prepend_mask",
        "embed_ids",
        "sum_embeds",
        "return_attn_z_loss",
        "attn_z_loss_weight",
        "seq_start_pos",
        "cache",
    ),
    "AttentionLayers.forward": (
        "x",
        "context",
        "mask",
        "context_mask",
        "attn_mask",
        "self_attn_kv_mask",
        "mems",
        "mem_masks",
        "seq_start_pos",
        "cache",
        "cache_age",
        "return_hiddens",
        "rotary_pos_emb",
    ),
}
# Not listed: Attention.forward's rel_pos / rotary_pos_emb / prev_attn / mem / mem_mask / cache /
# return_intermediates, the stack-to-attention plumbing the stack passes itself (anyformer's
# stack hands its attention layers positions, masks and cache slots in its own form).
# XTransformer's enc_* / dec_* keywords are checked by test_seed_keyword_through_xtransformer.

# How a user switches each keyword on: the keyword with a working value, plus what it needs.
# Every one of these builds in x-transformers 1.28.2 (test_seed_usages_are_x_transformers_usages).
SEED_USAGE = {
    "TransformerWrapper": {
        "attn_layers": {},  # given by the base call
        "num_tokens": dict(num_tokens=64),
        "max_seq_len": dict(max_seq_len=16),
        "emb_dim": dict(emb_dim=16),
        "embed_num_tokens": dict(embed_num_tokens={"type": 2}),
        "emb_dropout": dict(emb_dropout=0.1),
        "post_emb_norm": dict(post_emb_norm=True),
        "use_abs_pos_emb": dict(use_abs_pos_emb=False),
        "scaled_sinu_pos_emb": dict(scaled_sinu_pos_emb=True),
        "l2norm_embed": dict(l2norm_embed=True),
        "emb_frac_gradient": dict(emb_frac_gradient=0.5),
        "tie_embedding": dict(tie_embedding=True),
        "max_mem_len": dict(max_mem_len=4),
        "shift_mem_down": dict(max_mem_len=4, shift_mem_down=1),
        "num_memory_tokens": dict(num_memory_tokens=2),
        "memory_tokens_interspersed_every": dict(
            num_memory_tokens=2, memory_tokens_interspersed_every=2
        ),
        "logits_dim": dict(logits_dim=7),
        "attn_z_loss_weight": dict(attn_z_loss_weight=1e-4),
    },
    "AttentionLayers": {
        "dim": dict(dim=32),
        "depth": dict(depth=2),
        "heads": dict(heads=2),
        "causal": dict(causal=True),
        "cross_attend": dict(cross_attend=True),
        "only_cross": dict(cross_attend=True, only_cross=True),
        "custom_layers": dict(custom_layers=("a", "f", "f")),
        "layers_execute_order": dict(layers_execute_order=(0, 1, 0, 1, 2, 3)),
        "weight_tie_layers": dict(weight_tie_layers=True),
        "sandwich_coef": dict(sandwich_coef=1),
        "par_ratio": dict(par_ratio=4),
        "macaron": dict(macaron=True),
        "residual_attn": dict(residual_attn=True),
        "cross_residual_attn": dict(cross_attend=True, cross_residual_attn=True),
        "shift_tokens": dict(shift_tokens=1),
        "layer_dropout": dict(layer_dropout=0.1),
        "cross_attn_tokens_dropout": dict(cross_attend=True, cross_attn_tokens_dropout=0.25),
        "disable_abs_pos_emb": dict(disable_abs_pos_emb=True),
        "rotary_pos_emb": dict(rotary_pos_emb=True),
        "rotary_emb_dim": dict(rotary_pos_emb=True, rotary_emb_dim=8),
        "rotary_xpos": dict(causal=True, rotary_pos_emb=True, rotary_xpos=True),
        "rotary_xpos_scale_base": dict(
            causal=True, rotary_pos_emb=True, rotary_xpos=True, rotary_xpos_scale_base=256
        ),
        "rotary_interpolation_factor": dict(rotary_pos_emb=True, rotary_interpolation_factor=2.0),
        "rotary_base_rescale_factor": dict(rotary_pos_emb=True, rotary_base_rescale_factor=2.0),
        "alibi_pos_bias": dict(alibi_pos_bias=True),
        "alibi_num_heads": dict(alibi_pos_bias=True, alibi_num_heads=1),
        "rel_pos_bias": dict(rel_pos_bias=True),
        "rel_pos_num_buckets": dict(rel_pos_bias=True, rel_pos_num_buckets=16),
        "rel_pos_max_distance": dict(rel_pos_bias=True, rel_pos_max_distance=64),
        "dynamic_pos_bias": dict(dynamic_pos_bias=True),
        "dynamic_pos_bias_log_distance": dict(
            dynamic_pos_bias=True, dynamic_pos_bias_log_distance=True
        ),
        "dynamic_pos_bias_mlp_depth": dict(dynamic_pos_bias=True, dynamic_pos_bias_mlp_depth=3),
        "dynamic_pos_bias_norm": dict(dynamic_pos_bias=True, dynamic_pos_bias_norm=True),
        "pre_norm": dict(pre_norm=False),
        "pre_norm_has_final_norm": dict(pre_norm_has_final_norm=False),
        "sandwich_norm": dict(sandwich_norm=True),
        "resi_dual": dict(resi_dual=True),
        "resi_dual_scale": dict(resi_dual=True, resi_dual_scale=0.5),
        "use_scalenorm": dict(use_scalenorm=True),
        "use_rmsnorm": dict(use_rmsnorm=True),
        "use_simple_rmsnorm": dict(use_simple_rmsnorm=True),
        "gate_residual": dict(gate_residual=True),
        "scale_residual": dict(scale_residual=True),
        "scale_residual_constant": dict(scale_residual_constant=0.5),
        "zero_init_branch_output": dict(zero_init_branch_output=True),
    },
    "Attention": {
        "dim": dict(dim=32),
        "dim_head": dict(dim_head=16),
        "heads": dict(heads=2),
        "dim_context": dict(dim_context=48),
        "causal": dict(causal=True),
        "value_dim_head": dict(value_dim_head=8),
        "flash": dict(flash=True),
        "one_kv_head": dict(one_kv_head=True),
        "kv_heads": dict(kv_heads=1),
        "head_scale": dict(head_scale=True),
        "sparse_topk": dict(sparse_topk=2),
        "qk_norm": dict(qk_norm=True),
        "qk_norm_groups": dict(qk_norm=True, qk_norm_groups=2),
        "qk_norm_scale": dict(qk_norm=True, qk_norm_scale=8),
        "qk_norm_dim_scale": dict(qk_norm=True, qk_norm_dim_scale=True),
        "num_mem_kv": dict(num_mem_kv=2),
        "add_zero_kv": dict(add_zero_kv=True),
        "on_attn": dict(on_attn=True),
        "gate_values": dict(gate_values=True),
        "swiglu_values": dict(gate_values=True, swiglu_values=True),
        "gate_value_heads": dict(gate_value_heads=True),
        "dropout": dict(dropout=0.1),
        "zero_init_output": dict(zero_init_output=True),
        "onnxable": dict(onnxable=True),
        "talking_heads": dict(talking_heads=True),
        "shared_kv": dict(shared_kv=True),
        "tensor_product": dict(tensor_product=True),
        "rotary_embed_values": dict(rotary_embed_values=True),
        "max_attend_past": dict(max_attend_past=4),
    },
    "FeedForward": {
        "dim": dict(dim=32),
        "dim_out": dict(dim_out=8),
        "mult": dict(mult=2),
        "glu": dict(glu=True),
        "glu_mult_bias": dict(glu=True, glu_mult_bias=True),
        "swish": dict(swish=True),
        "relu_squared": dict(relu_squared=True),
        "post_act_ln": dict(post_act_ln=True),
        "dropout": dict(dropout=0.1),
        "no_bias": dict(no_bias=True),
        "zero_init_output": dict(zero_init_output=True),
    },
    "ViTransformerWrapper": {
        "image_size": dict(image_size=32),
        "patch_size": dict(patch_size=8),
        "attn_layers": {},  # given by the base call
        "channels": dict(channels=3),
        "num_classes": dict(num_classes=10),
        "post_emb_norm": dict(post_emb_norm=True),
        "num_register_tokens": dict(num_register_tokens=2),
        "emb_dropout": dict(emb_dropout=0.1),
    },
    "XTransformer": {
        "dim": dict(dim=32),
        "tie_token_emb": dict(tie_token_emb=True),
        "ignore_index": dict(ignore_index=0),
        "pad_value": dict(pad_value=0),
        "cross_attn_tokens_dropout": dict(cross_attn_tokens_dropout=0.25),
    },
}

# (base, usage) -> the model; the base keywords are the smallest model of each class.
SEED_BUILD = {
    "TransformerWrapper": lambda cls, kw: cls["TransformerWrapper"](
        **{
            "num_tokens": 64,
            "max_seq_len": 16,
            "attn_layers": cls["Decoder"](dim=32, depth=1, heads=2),
            **kw,
        }
    ),
    "AttentionLayers": lambda cls, kw: cls["AttentionLayers"](
        **{"dim": 32, "depth": 2, "heads": 2, **kw}
    ),
    "Attention": lambda cls, kw: cls["Attention"](**{"dim": 32, "heads": 2, **kw}),
    "FeedForward": lambda cls, kw: cls["FeedForward"](**{"dim": 32, **kw}),
    "ViTransformerWrapper": lambda cls, kw: cls["ViTransformerWrapper"](
        **{
            "image_size": 32,
            "patch_size": 8,
            "attn_layers": cls["Encoder"](dim=32, depth=1, heads=2),
            **kw,
        }
    ),
    "XTransformer": lambda cls, kw: cls["XTransformer"](**{**XT_KW, **kw}),
}

ANYFORMER_CLASSES = dict(
    TransformerWrapper=TransformerWrapper,
    ViTransformerWrapper=ViTransformerWrapper,
    XTransformer=XTransformer,
    AttentionLayers=AttentionLayers,
    Attention=Attention,
    FeedForward=FeedForward,
    Decoder=Decoder,
    Encoder=Encoder,
)

# keywords the stack passes to its Attention / FeedForward itself (prefixing them collides)
STACK_SUPPLIES = {
    "attn_": {"dim", "heads", "causal", "dim_context"},
    "cross_attn_": {"dim", "heads", "causal"},
    "ff_": {"dim", "dim_out"},
}
# stack keywords a self-attention keyword needs to mean something there (values are rotated only
# when the stack has rotary embeddings)
STACK_NEEDS = {"rotary_embed_values": {"rotary_pos_emb": True}}


def accepted_or_not_yet(build, names):
    """build() succeeds, or raises NotImplementedError naming one of ``names`` (the keyword or a
    keyword it needs). Anything else, a TypeError for an unknown keyword above all, fails."""
    try:
        build()
    except NotImplementedError as error:
        named = [name for name in names if f"'{name}'" in str(error)]
        assert named, f"NotImplementedError names none of {sorted(names)}: {error}"


def prefixed(prefix, usage):
    return {prefix + name: value for name, value in usage.items()}


CONSTRUCTOR_CASES = [(owner, name) for owner in SEED_BUILD for name in SEED_KEYWORDS[owner]]


@pytest.mark.parametrize(
    ("owner", "name"), CONSTRUCTOR_CASES, ids=[f"{o}-{n}" for o, n in CONSTRUCTOR_CASES]
)
def test_seed_keyword_accepted_or_not_yet(owner, name):
    usage = SEED_USAGE[owner][name]
    accepted_or_not_yet(lambda: SEED_BUILD[owner](ANYFORMER_CLASSES, usage), usage)


STACK_ROUTED_CASES = [
    (prefix, name)
    for prefix, owner in (
        ("attn_", "Attention"),
        ("cross_attn_", "Attention"),
        ("ff_", "FeedForward"),
    )
    for name in SEED_KEYWORDS[owner]
    if name not in STACK_SUPPLIES[prefix]
]


def stack_usage(prefix, name):
    """The stack keywords that switch one Attention / FeedForward seed keyword on."""
    owner = "FeedForward" if prefix == "ff_" else "Attention"
    usage = prefixed(prefix, SEED_USAGE[owner][name])  # named with its prefix, as written
    if prefix == "cross_attn_":
        usage["cross_attend"] = True
    if prefix == "attn_":
        usage.update(STACK_NEEDS.get(name, {}))
    return usage


@pytest.mark.parametrize(
    ("prefix", "name"), STACK_ROUTED_CASES, ids=[p + n for p, n in STACK_ROUTED_CASES]
)
def test_seed_keyword_through_stack_prefix(prefix, name):
    usage = stack_usage(prefix, name)
    accepted_or_not_yet(lambda: AttentionLayers(dim=32, depth=2, heads=2, **usage), usage)


# XTransformer routes enc_* / dec_* to its two sides. Per the reference (section 1.9.1) only
# these reach the TransformerWrappers; every other one goes to the Encoder / Decoder.
XT_WRAPPER_ROUTED = {
    "enc_": (
        "num_tokens",
        "max_seq_len",
        "emb_dropout",
        "num_memory_tokens",
        "scaled_sinu_pos_emb",
        "use_abs_pos_emb",
    ),
    "dec_": ("num_tokens", "max_seq_len", "emb_dropout", "scaled_sinu_pos_emb", "use_abs_pos_emb"),
}
XT_FIXED = {"dim", "causal", "cross_attend", "only_cross"}  # XTransformer sets these itself


def xtransformer_cases():
    cases = []
    for side, wrapper_names in XT_WRAPPER_ROUTED.items():
        cases += [(side, "", name) for name in wrapper_names]
        for name in SEED_KEYWORDS["AttentionLayers"]:
            needs = SEED_USAGE["AttentionLayers"][name].keys() & {"causal", "cross_attend"}
            if name not in XT_FIXED and not (needs and side == "enc_"):
                cases.append((side, "", name))
        for prefix, owner in (("attn_", "Attention"), ("ff_", "FeedForward")):
            cases += [
                (side, prefix, n) for n in SEED_KEYWORDS[owner] if n not in STACK_SUPPLIES[prefix]
            ]
    cases += [
        ("dec_", "cross_attn_", n)
        for n in SEED_KEYWORDS["Attention"]
        if n not in STACK_SUPPLIES["cross_attn_"]
    ]
    return cases


XT_CASES = xtransformer_cases()


def xtransformer_usage(side, prefix, name):
    """The enc_* / dec_* keywords that switch one seed keyword on for one side."""
    owner = {"attn_": "Attention", "cross_attn_": "Attention", "ff_": "FeedForward"}.get(prefix)
    if owner is None:
        owner = (
            "AttentionLayers" if name in SEED_KEYWORDS["AttentionLayers"] else "TransformerWrapper"
        )
    usage = {
        prefix + key: value
        for key, value in SEED_USAGE[owner][name].items()
        if key not in ("causal", "cross_attend")  # the decoder is causal and cross-attends
    }
    if prefix == "attn_":
        usage.update(STACK_NEEDS.get(name, {}))
    return {**XT_KW, "enc_depth": 2, "dec_depth": 2}, prefixed(side, usage), [*usage]


@pytest.mark.parametrize(
    ("side", "prefix", "name"), XT_CASES, ids=[s + p + n for s, p, n in XT_CASES]
)
def test_seed_keyword_through_xtransformer(side, prefix, name):
    base, kwargs, unprefixed = xtransformer_usage(side, prefix, name)
    # the error may name the keyword as passed (enc_...) or as its side's stack knows it
    accepted_or_not_yet(lambda: XTransformer(**{**base, **kwargs}), [*kwargs, *unprefixed])


def _tokens():
    return torch.randint(0, 64, (1, 4), generator=torch.Generator().manual_seed(0))


def _keep(*shape):
    return torch.ones(*shape, dtype=torch.bool)


def _mems():
    return [torch.zeros(1, 2, 32)]  # one (b, m, d) memory per self-attention layer


# forward keyword -> (constructor keywords it needs, (model, input) -> forward keywords)
FORWARD_USAGE = {
    "TransformerWrapper.forward": {
        "x": ({}, lambda m, x: dict(x=x)),
        "return_embeddings": ({}, lambda m, x: dict(return_embeddings=True)),
        "return_logits_and_embeddings": ({}, lambda m, x: dict(return_logits_and_embeddings=True)),
        "return_intermediates": ({}, lambda m, x: dict(return_intermediates=True)),
        "mask": ({}, lambda m, x: dict(mask=_keep(1, 4))),
        "return_mems": (dict(max_mem_len=4), lambda m, x: dict(return_mems=True)),
        "return_attn": ({}, lambda m, x: dict(return_attn=True)),
        "mems": ({}, lambda m, x: dict(mems=_mems())),
        "mem_masks": ({}, lambda m, x: dict(mems=_mems(), mem_masks=[_keep(1, 2)])),
        "pos": ({}, lambda m, x: dict(pos=torch.arange(4))),
        "prepend_embeds": ({}, lambda m, x: dict(prepend_embeds=torch.zeros(1, 2, 32))),
        "prepend_mask": (
            {},
            lambda m, x: dict(prepend_embeds=torch.zeros(1, 2, 32), prepend_mask=_keep(1, 2)),
        ),
        "embed_ids": (
            dict(embed_num_tokens={"type": 2}),
            lambda m, x: dict(embed_ids={"type": torch.zeros(1, 4, dtype=torch.long)}),
        ),
        "sum_embeds": ({}, lambda m, x: dict(sum_embeds=torch.zeros(1, 4, 32))),
        "return_attn_z_loss": ({}, lambda m, x: dict(return_attn_z_loss=True)),
        "attn_z_loss_weight": (
            {},
            lambda m, x: dict(return_attn_z_loss=True, attn_z_loss_weight=1e-3),
        ),
        "seq_start_pos": ({}, lambda m, x: dict(seq_start_pos=torch.tensor([1]))),
        "cache": ({}, lambda m, x: dict(cache=m(x[:, :3], return_intermediates=True)[1])),
    },
    "AttentionLayers.forward": {
        "x": ({}, lambda s, h: dict(x=h)),
        "context": (dict(cross_attend=True), lambda s, h: dict(context=torch.zeros(1, 3, 32))),
        "mask": ({}, lambda s, h: dict(mask=_keep(1, 4))),
        "context_mask": (
            dict(cross_attend=True),
            lambda s, h: dict(context=torch.zeros(1, 3, 32), context_mask=_keep(1, 3)),
        ),
        "attn_mask": ({}, lambda s, h: dict(attn_mask=_keep(4, 4))),
        "self_attn_kv_mask": ({}, lambda s, h: dict(self_attn_kv_mask=_keep(1, 4))),
        "mems": ({}, lambda s, h: dict(mems=_mems())),
        "mem_masks": ({}, lambda s, h: dict(mems=_mems(), mem_masks=[_keep(1, 2)])),
        "seq_start_pos": ({}, lambda s, h: dict(seq_start_pos=torch.tensor([1]))),
        "cache": ({}, lambda s, h: dict(cache=s(h[:, :3], return_hiddens=True)[1])),
        "cache_age": (
            {},
            lambda s, h: dict(cache=s(h[:, :3], return_hiddens=True)[1], cache_age=1),
        ),
        "return_hiddens": ({}, lambda s, h: dict(return_hiddens=True)),
        "rotary_pos_emb": ({}, lambda s, h: dict(rotary_pos_emb=None)),  # the default override
    },
}

FORWARD_CASES = [(owner, name) for owner in FORWARD_USAGE for name in SEED_KEYWORDS[owner]]


def forward_model(classes, owner, build_kwargs):
    """The smallest model whose forward owns the keyword, and its input."""
    torch.manual_seed(0)
    if owner == "TransformerWrapper.forward":
        model = classes["TransformerWrapper"](
            num_tokens=64,
            max_seq_len=16,
            attn_layers=classes["Decoder"](dim=32, depth=1, heads=2),
            **build_kwargs,
        )
        return model.eval(), _tokens()
    return classes["Decoder"](dim=32, depth=1, heads=2, **build_kwargs).eval(), torch.randn(
        1, 4, 32
    )


def call_forward(model, x, kwargs):
    with torch.no_grad():
        return model(**kwargs) if "x" in kwargs else model(x, **kwargs)


@pytest.mark.parametrize(
    ("owner", "name"), FORWARD_CASES, ids=[f"{o}-{n}" for o, n in FORWARD_CASES]
)
def test_seed_forward_keyword_accepted_or_not_yet(owner, name):
    build_kwargs, call_kwargs = FORWARD_USAGE[owner][name]
    built = []
    accepted_or_not_yet(
        lambda: built.append(forward_model(ANYFORMER_CLASSES, owner, build_kwargs)), build_kwargs
    )
    if not built:
        return  # a constructor keyword it needs is not available yet (checked above)
    model, x = built[0]
    with torch.no_grad():
        kwargs = call_kwargs(model, x)
    accepted_or_not_yet(lambda: call_forward(model, x, kwargs), kwargs)


def test_seed_usages_are_x_transformers_usages():
    """A guard on this file's data: every seed keyword above is a parameter of its owner in
    x-transformers 1.28.2, and every usage above builds and runs there."""
    xt = pytest.importorskip("x_transformers.x_transformers")
    for owner, names in SEED_KEYWORDS.items():
        usage = FORWARD_USAGE.get(owner) or SEED_USAGE[owner]
        assert set(usage) == set(names), owner
        cls_name, _, method = owner.partition(".")
        params = inspect.signature(getattr(getattr(xt, cls_name), method or "__init__")).parameters
        assert set(names) <= set(params), (owner, set(names) - set(params))
    classes = {name: getattr(xt, name) for name in ANYFORMER_CLASSES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1.28.2's deprecated torch.cuda.amp calls
        for owner, name in CONSTRUCTOR_CASES:
            SEED_BUILD[owner](classes, SEED_USAGE[owner][name])
        for prefix, name in STACK_ROUTED_CASES:
            xt.AttentionLayers(dim=32, depth=2, heads=2, **stack_usage(prefix, name))
        for case in XT_CASES:
            base, kwargs, _ = xtransformer_usage(*case)
            xt.XTransformer(**{**base, **kwargs})
        for owner, name in FORWARD_CASES:
            build_kwargs, call_kwargs = FORWARD_USAGE[owner][name]
            model, x = forward_model(classes, owner, build_kwargs)
            with torch.no_grad():
                call_forward(model, x, call_kwargs(model, x))


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


def silu64(t):
    return t / (1 + torch.exp(-t))


def gelu64(t):
    return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))


def ff_by_hand(ff, x, act, glu=False, post_ln=False):
    """float64 proj_out(norm(act(proj_in x))) from the module's weights, written out."""
    w = {name: p.detach().double() for name, p in ff.named_parameters()}
    h = x.double() @ w["proj_in.weight"].T + w.get("proj_in.bias", 0.0)
    if glu:
        value, gate = h.chunk(2, dim=-1)
        h = value * act(gate) * w.get("act.mult_bias", 1.0)
    else:
        h = act(h)
    if post_ln:
        centred = h - h.mean(-1, keepdim=True)
        h = centred / torch.sqrt(centred.square().mean(-1, keepdim=True) + 1e-5)
        h = h * w["post_act_norm.weight"]
    return h @ w["proj_out.weight"].T + w.get("proj_out.bias", 0.0)


def test_ff_swish_uses_silu():
    torch.manual_seed(0)
    ff = ff_of(Encoder(dim=32, depth=1, ff_swish=True))
    assert isinstance(ff.act, torch.nn.SiLU)
    x = torch.randn(3, 32)
    torch.testing.assert_close(ff(x).double(), ff_by_hand(ff, x, silu64), atol=1e-5, rtol=1e-5)
    swiglu = ff_of(Encoder(dim=32, depth=1, ff_swish=True, ff_glu=True))
    assert isinstance(swiglu.act.act, torch.nn.SiLU)
    expected = ff_by_hand(swiglu, x, silu64, glu=True)
    torch.testing.assert_close(swiglu(x).double(), expected, atol=1e-5, rtol=1e-5)


def test_ff_relu_squared_activation():
    ff = ff_of(Encoder(dim=32, depth=1, ff_relu_squared=True))
    assert isinstance(ff.act, ReluSquared)
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5, 3.0])
    torch.testing.assert_close(ff.act(x), torch.tensor([0.0, 0.0, 0.0, 2.25, 9.0]))
    gated = ff_of(Encoder(dim=32, depth=1, ff_relu_squared=True, ff_glu=True))
    assert isinstance(gated.act.act, ReluSquared)


def test_ff_post_act_ln_normalises_hidden():
    torch.manual_seed(0)
    ff = ff_of(Encoder(dim=32, depth=1, ff_post_act_ln=True))
    assert ff.post_act_norm.normalized_shape == (128,)
    with torch.no_grad():  # a gain that is not all ones, so its place in the formula matters
        ff.post_act_norm.weight.copy_(torch.linspace(0.5, 1.5, 128))
    x = torch.randn(3, 32)
    expected = ff_by_hand(ff, x, gelu64, post_ln=True)
    torch.testing.assert_close(ff(x).double(), expected, atol=1e-5, rtol=1e-5)
    plain = ff_of(Encoder(dim=32, depth=1))
    assert isinstance(plain.post_act_norm, torch.nn.Identity)
    torch.testing.assert_close(
        plain(x).double(), ff_by_hand(plain, x, gelu64), atol=1e-5, rtol=1e-5
    )


def test_ff_dropout_probability_and_effect():
    torch.manual_seed(0)
    ff = ff_of(Encoder(dim=32, depth=1, ff_dropout=0.5))
    x = torch.randn(4, 32)
    # eval: no dropout, the plain formula
    ff.eval()
    torch.testing.assert_close(ff(x).double(), ff_by_hand(ff, x, gelu64), atol=1e-5, rtol=1e-5)
    # training: dropout sits after the activation; about half the hidden units are zeroed and
    # the survivors doubled
    ff.train()
    dropped = []
    handle = ff.dropout.register_forward_hook(lambda mod, args, out: dropped.append(out))
    out = ff(x)
    handle.remove()
    keep = dropped[0] != 0
    assert 0.35 < keep.double().mean().item() < 0.65
    # hidden units dropped with p = 0.5, the kept ones scaled by 1 / (1 - p) = 2
    expected = ff_by_hand(ff, x, lambda t: gelu64(t) * keep.double() * 2.0)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


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
