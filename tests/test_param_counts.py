# Reference parameter counts and output shapes.
#
# Every expected number below was measured with x-transformers 1.28.2 (torch 2.13.0, CPU) by
# building the very same keywords with x_transformers' classes and taking
# sum(p.numel() for p in model.parameters()) (shared parameters counted once); output shapes
# come from a tiny eval-mode forward of the same x-transformers model. The anyformer package never
# imports x_transformers; these numbers are hard-coded so the anyformer tests read plainly, and
# test_reference_numbers_are_x_transformers_numbers rebuilds every model in x-transformers 1.28.2
# (a test extra) and measures again, so no number here can be a copy of anyformer's own output.
#
# Where anyformer's count deliberately differs from x-transformers 1.28.2:
# - xtransformer:      x-transformers 361984, anyformer 355584 (= 361984 - 64 * 100).
# - xtransformer_tied: x-transformers 353024, anyformer 346624 (= 353024 - 64 * 100).
#   x-transformers 1.28.2 gives XTransformer's encoder TransformerWrapper an output head
#   Linear(dim, enc_num_tokens, bias=False) that XTransformer never uses; anyformer builds the
#   encoder without it.
#
# Other 1.28.2 notes:
# - sinu_l2norm_types: 1.28.2 raises AttributeError while constructing this model
#   (TransformerWrapper.init_ does nn.init.normal_(self.pos_emb.emb.weight) when l2norm_embed is
#   set, but ScaledSinusoidalEmbedding has no .emb). 164993 was measured with that init_ call
#   bypassed; initialisation does not change the parameter count (the same keywords without
#   l2norm_embed also give 164993).
# - emb_dim_tied: 1.28.2 builds it (78400 parameters: no to_logits, project_emb 32->64) but its
#   head `t @ token_emb.emb.weight.t()` cannot run (64 vs 32). anyformer refuses it with a
#   ValueError naming tie_embedding and emb_dim; emb_dim_untied and tied cover both features.

import warnings

import pytest
import torch

import anyformer

# each builder takes the library's classes (anyformer, or x_transformers for the oracle)
BUILDERS = {
    "default_decoder": lambda c: c.TransformerWrapper(
        num_tokens=256, max_seq_len=1024, attn_layers=c.Decoder(dim=384, depth=6, heads=6)
    ),
    "encoder_dim_head": lambda c: c.TransformerWrapper(
        num_tokens=100,
        max_seq_len=128,
        attn_layers=c.Encoder(dim=64, depth=2, heads=4, attn_dim_head=32),
    ),
    "glu_mult": lambda c: c.TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        attn_layers=c.Decoder(dim=64, depth=2, heads=2, ff_glu=True, ff_mult=2),
    ),
    "swiglu_mult_bias": lambda c: c.TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        attn_layers=c.Decoder(
            dim=64, depth=2, heads=2, ff_glu=True, ff_swish=True, ff_glu_mult_bias=True
        ),
    ),
    "no_bias_relu2": lambda c: c.TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        attn_layers=c.Decoder(dim=64, depth=2, heads=2, ff_no_bias=True, ff_relu_squared=True),
    ),
    "post_act_ln": lambda c: c.TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        attn_layers=c.Decoder(dim=64, depth=2, heads=2, ff_post_act_ln=True, ff_mult=3),
    ),
    "emb_dim_untied": lambda c: c.TransformerWrapper(
        num_tokens=256, max_seq_len=64, emb_dim=32, attn_layers=c.Decoder(dim=64, depth=1, heads=2)
    ),
    "tied": lambda c: c.TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        tie_embedding=True,
        attn_layers=c.Decoder(dim=64, depth=1, heads=2),
    ),
    "post_emb_norm_logits": lambda c: c.TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        post_emb_norm=True,
        logits_dim=10,
        use_abs_pos_emb=False,
        attn_layers=c.Decoder(dim=64, depth=2, heads=2),
    ),
    "sinu_l2norm_types": lambda c: c.TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        scaled_sinu_pos_emb=True,
        l2norm_embed=True,
        embed_num_tokens=dict(type=3),
        attn_layers=c.Encoder(dim=64, depth=2, heads=2),
    ),
    "cross_attend_dim_context": lambda c: c.TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        attn_layers=c.Decoder(
            dim=64, depth=2, heads=2, cross_attend=True, cross_attn_dim_context=48
        ),
    ),
    "post_ln_encoder": lambda c: c.TransformerWrapper(
        num_tokens=100,
        max_seq_len=64,
        attn_layers=c.Encoder(dim=64, depth=3, heads=4, pre_norm=False),
    ),
    "cross_attender": lambda c: c.CrossAttender(dim=64, depth=2, heads=4),
    "prefix_decoder": lambda c: c.TransformerWrapper(
        num_tokens=256, max_seq_len=64, attn_layers=c.PrefixDecoder(dim=64, depth=2, heads=4)
    ),
    "vit": lambda c: c.ViTransformerWrapper(
        image_size=32,
        patch_size=8,
        num_classes=10,
        post_emb_norm=True,
        num_register_tokens=4,
        attn_layers=c.Encoder(dim=64, depth=2, heads=4),
    ),
    "only_cross_decoder": lambda c: c.Decoder(
        dim=64, depth=2, heads=2, cross_attend=True, only_cross=True
    ),
    "xtransformer": lambda c: c.XTransformer(
        dim=64,
        enc_num_tokens=100,
        enc_depth=2,
        enc_heads=2,
        enc_max_seq_len=32,
        dec_num_tokens=120,
        dec_depth=2,
        dec_heads=2,
        dec_max_seq_len=32,
        tie_token_emb=False,
    ),
    "xtransformer_tied": lambda c: c.XTransformer(
        dim=64,
        enc_num_tokens=100,
        enc_depth=2,
        enc_heads=2,
        enc_max_seq_len=32,
        dec_num_tokens=100,
        dec_depth=2,
        dec_heads=2,
        dec_max_seq_len=32,
        tie_token_emb=True,
    ),
}

# (id, expected anyformer count); equal to the x-transformers 1.28.2 count unless noted above.
EXPECTED_COUNTS = [
    ("default_decoder", 11223168),
    ("encoder_dim_head", 153024),
    ("glu_mult", 152512),
    ("swiglu_mult_bias", 202688),
    ("no_bias_relu2", 168256),
    ("post_act_ln", 152768),
    ("emb_dim_untied", 94784),
    ("tied", 86528),
    ("post_emb_norm_logits", 149120),
    ("sinu_l2norm_types", 164993),
    ("cross_attend_dim_context", 226368),
    ("post_ln_encoder", 313152),
    ("cross_attender", 197568),
    ("prefix_decoder", 234432),
    ("vit", 212170),
    ("only_cross_decoder", 132032),
    ("xtransformer", 361984 - 64 * 100),  # x-transformers 1.28.2: 361984 (unused encoder head)
    ("xtransformer_tied", 353024 - 64 * 100),  # x-transformers 1.28.2: 353024 (same reason)
]


def count_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "expected"), EXPECTED_COUNTS, ids=[c[0] for c in EXPECTED_COUNTS])
def test_param_count(name, expected):
    assert count_params(BUILDERS[name](anyformer)) == expected


def emb_dim_tied(c):
    return c.TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        emb_dim=32,
        tie_embedding=True,
        attn_layers=c.Decoder(dim=64, depth=1, heads=2),
    )


def test_emb_dim_tied():
    # anyformer refuses it at construction and names both options
    with pytest.raises(ValueError, match="tie_embedding=True needs emb_dim == dim"):
        emb_dim_tied(anyformer)


def test_emb_dim_tied_is_broken_in_x_transformers():
    # the defect the refusal above fixes: 1.28.2 builds it (78400 parameters), but its tied head
    # (t @ token_emb.emb.weight.t()) cannot run, 64 against 32
    xt = pytest.importorskip("x_transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = emb_dim_tied(xt).eval()
        assert count_params(model) == 78400
        with pytest.raises(RuntimeError):
            model(torch.randint(0, 256, (1, 8)))


def _ids():
    return torch.randint(0, 100, (2, 8))


# (id, inputs -> (args, kwargs), expected output shape), as measured with x-transformers 1.28.2.
SHAPE_CASES = [
    ("default_decoder", lambda: ((_ids(),), {}), (2, 8, 256)),
    ("encoder_dim_head", lambda: ((_ids(),), {}), (2, 8, 100)),
    ("glu_mult", lambda: ((_ids(),), {}), (2, 8, 256)),
    ("swiglu_mult_bias", lambda: ((_ids(),), {}), (2, 8, 256)),
    ("no_bias_relu2", lambda: ((_ids(),), {}), (2, 8, 256)),
    ("post_act_ln", lambda: ((_ids(),), {}), (2, 8, 256)),
    ("emb_dim_untied", lambda: ((_ids(),), {}), (2, 8, 256)),
    ("tied", lambda: ((_ids(),), {}), (2, 8, 256)),
    ("post_emb_norm_logits", lambda: ((_ids(),), {}), (2, 8, 10)),
    (
        "sinu_l2norm_types",
        lambda: ((_ids(),), {"embed_ids": {"type": torch.randint(0, 3, (2, 8))}}),
        (2, 8, 256),
    ),
    (
        "cross_attend_dim_context",
        lambda: ((_ids(),), {"context": torch.randn(2, 5, 48)}),
        (2, 8, 256),
    ),
    ("post_ln_encoder", lambda: ((_ids(),), {}), (2, 8, 100)),
    (
        "cross_attender",
        lambda: ((torch.randn(2, 8, 64),), {"context": torch.randn(2, 5, 64)}),
        (2, 8, 64),
    ),
    ("prefix_decoder", lambda: ((_ids(),), {}), (2, 8, 256)),
    ("vit", lambda: ((torch.randn(2, 3, 32, 32),), {}), (2, 10)),
    (
        "only_cross_decoder",
        lambda: ((torch.randn(2, 8, 64),), {"context": torch.randn(2, 5, 64)}),
        (2, 8, 64),
    ),
    # XTransformer.forward(src, tgt) returns the scalar decoder loss.
    ("xtransformer", lambda: ((_ids(), _ids()), {}), ()),
    ("xtransformer_tied", lambda: ((_ids(), _ids()), {}), ()),
]


@pytest.mark.parametrize(("name", "inputs", "shape"), SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_output_shape(name, inputs, shape):
    torch.manual_seed(0)
    model = BUILDERS[name](anyformer).eval()
    args, kwargs = inputs()
    with torch.no_grad():
        out = model(*args, **kwargs)
    assert tuple(out.shape) == shape


# Where anyformer's count differs from x-transformers 1.28.2 on purpose (see the top of the file).
XT_EXTRA_PARAMS = {"xtransformer": 64 * 100, "xtransformer_tied": 64 * 100}


def xt_builder(name):
    """The same keywords for x-transformers 1.28.2; sinu_l2norm_types cannot be built there
    (AttributeError in its init_), so it is built without l2norm_embed, which holds no parameter."""
    if name != "sinu_l2norm_types":
        return BUILDERS[name]
    return lambda c: c.TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        scaled_sinu_pos_emb=True,
        embed_num_tokens=dict(type=3),
        attn_layers=c.Encoder(dim=64, depth=2, heads=2),
    )


@pytest.mark.parametrize(("name", "inputs", "shape"), SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_reference_numbers_are_x_transformers_numbers(name, inputs, shape):
    """The hard-coded counts and shapes above are x-transformers 1.28.2's, not copies of
    anyformer's output: rebuild each model there and measure again."""
    xt = pytest.importorskip("x_transformers")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1.28.2's deprecated torch.cuda.amp calls
        model = xt_builder(name)(xt).eval()
        args, kwargs = inputs()
        with torch.no_grad():
            out = model(*args, **kwargs)
    expected = dict(EXPECTED_COUNTS)[name] + XT_EXTRA_PARAMS.get(name, 0)
    assert count_params(model) == expected
    assert tuple(out.shape) == shape
