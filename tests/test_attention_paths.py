"""The kernel path is chosen at construction: fused wherever the math allows, explicit only for
what must see the attention matrix. Both paths agree; flash=True with an explicit-only option
raises naming both; the model reports each layer's path."""

from __future__ import annotations

import pytest
import torch

from anyformer import Attention, Decoder, Encoder, TransformerWrapper
from anyformer.nn.masks import AttentionMask

DIM = 16

#: every option the fused path supports (alone and together)
FUSED_OPTIONS = {
    "plain": {},
    "kv_heads": dict(heads=4, kv_heads=2),
    "one_kv_head": dict(heads=4, one_kv_head=True),
    "value_dim_head": dict(value_dim_head=6),
    "shared_kv": dict(shared_kv=True),
    "qk_norm": dict(qk_norm=True, qk_norm_groups=2, qk_norm_scale=5.0),
    "qk_norm_dim_scale_gqa": dict(heads=4, kv_heads=2, qk_norm=True, qk_norm_dim_scale=True),
    "num_mem_kv": dict(num_mem_kv=2),
    "add_zero_kv": dict(add_zero_kv=True),
    "on_attn": dict(on_attn=True),
    "gates": dict(gate_values=True, swiglu_values=True, gate_value_heads=True, head_scale=True),
    "tensor_product": dict(heads=4, kv_heads=2, tensor_product=True),
    "max_attend_past": dict(max_attend_past=2),
    "all": dict(
        heads=4,
        kv_heads=2,
        qk_norm=True,
        num_mem_kv=2,
        add_zero_kv=True,
        gate_values=True,
        gate_value_heads=True,
        head_scale=True,
        on_attn=True,
        tensor_product=True,
        max_attend_past=3,
    ),
}


def _pair(options: dict, causal: bool, **extra) -> tuple[Attention, Attention]:
    options = dict(options)
    heads = options.pop("heads", 2)
    torch.manual_seed(0)
    fused = Attention(DIM, heads=heads, causal=causal, dim_head=8, **options, **extra).eval()
    explicit = Attention(
        DIM, heads=heads, causal=causal, dim_head=8, kernel="explicit", **options, **extra
    ).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    explicit.load_state_dict(fused.state_dict())
    return fused, explicit


@pytest.mark.parametrize("name", list(FUSED_OPTIONS))
@pytest.mark.parametrize("kind", ["causal", "non-causal", "cross"])
@pytest.mark.parametrize("masking", ["none", "key-mask", "attn-mask"])
def test_fused_and_explicit_paths_agree(name, kind, masking):
    cross = kind == "cross"
    fused, explicit = _pair(
        FUSED_OPTIONS[name], causal=kind == "causal", **({"dim_context": 12} if cross else {})
    )
    assert (fused.path, explicit.path) == ("fused", "explicit")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, DIM, generator=gen)
    kwargs: dict = {}
    j = 6
    if cross:
        j = 5
        kwargs["context"] = torch.randn(2, j, 12, generator=gen)
    if masking == "key-mask":
        key_mask = torch.ones(2, j, dtype=torch.bool)
        key_mask[1, -2:] = False
        kwargs["context_mask" if cross else "mask"] = key_mask
    elif masking == "attn-mask":
        attn_mask = torch.rand(2, 1, 6, j, generator=gen) > 0.3
        attn_mask[0, 0, 1] = False  # a query with no key of the sequence
        kwargs["attn_mask"] = attn_mask
    with torch.no_grad():
        a, b = fused(x, **kwargs), explicit(x, **kwargs)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.isnan(a).any()


def test_fused_path_keeps_sdpa_is_causal_without_a_materialised_mask():
    """A plain causal layer hands SDPA is_causal=True and no mask; with memory keys the mask is
    (i, j) only, never (b, h, i, j)."""
    seen = []

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        seen.append((None if attn_mask is None else tuple(attn_mask.shape), is_causal))
        return original(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        x = torch.randn(3, 5, DIM)
        Attention(DIM, heads=2, causal=True, dim_head=8)(x)
        Attention(DIM, heads=2, causal=True, dim_head=8, num_mem_kv=2)(x)
        Attention(DIM, heads=4, causal=True, dim_head=8, kv_heads=2)(x)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert seen == [(None, True), ((5, 7), False), (None, True)]


@pytest.mark.parametrize(
    "options, named",
    [
        (dict(attn_talking_heads=True), "attn_talking_heads=True"),
        (dict(attn_pre_talking_heads=True), "attn_pre_talking_heads=True"),
        (dict(attn_post_talking_heads=True), "attn_post_talking_heads=True"),
        (dict(attn_sparse_topk=4), "attn_sparse_topk=4"),
        (dict(attn_kernel="explicit"), "attn_kernel='explicit'"),
        (dict(residual_attn=True), "residual_attn=True"),
    ],
)
def test_flash_with_an_explicit_only_option_raises_naming_both(options, named):
    with pytest.raises(ValueError) as err:
        Decoder(dim=DIM, depth=1, heads=2, attn_flash=True, **options)
    assert named in str(err.value) and "attn_flash=True" in str(err.value)


def test_cross_residual_attention_with_cross_flash_raises():
    with pytest.raises(ValueError, match=r"cross_residual_attn=True .* cross_attn_flash=True"):
        Decoder(
            dim=DIM, depth=1, cross_attend=True, cross_attn_flash=True, cross_residual_attn=True
        )


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(heads=4, kv_heads=3), r"kv_heads \(3\) must divide heads \(4\)"),
        (dict(one_kv_head=True, kv_heads=2), "one_kv_head=True .* or attn_kv_heads, not both"),
        (dict(swiglu_values=True), "swiglu_values=True needs attn_gate_values=True"),
        (dict(qk_norm_scale=3.0), "qk_norm_scale was set but attn_qk_norm=False"),
        (dict(qk_norm=True, qk_norm_groups=3), r"qk_norm_groups \(3\) must divide"),
        (dict(qk_norm=True, qk_norm_groups=4), "leaves 2 features per group"),
        (dict(shared_kv=True, value_dim_head=4), "shared_kv=True needs attn_value_dim_head"),
        (dict(sparse_topk=0), "sparse_topk must be >= 1, got 0"),
        (dict(num_mem_kv=-1), "num_mem_kv must be >= 0, got -1"),
        (dict(kernel="fast"), "kernel must be one of"),
    ],
)
def test_option_errors_name_the_keyword(kwargs, pattern):
    kwargs = dict(kwargs)
    heads = kwargs.pop("heads", 2)
    with pytest.raises(ValueError, match=pattern):
        Encoder(
            dim=DIM,
            depth=1,
            heads=heads,
            attn_dim_head=8,
            **{f"attn_{k}": v for k, v in kwargs.items()},
        )


def test_capabilities_report_each_layer_path():
    model = TransformerWrapper(
        num_tokens=32,
        max_seq_len=16,
        attn_layers=Decoder(
            dim=DIM,
            depth=2,
            heads=4,
            attn_kv_heads=2,
            cross_attend=True,
            cross_attn_sparse_topk=2,
            residual_attn=True,
        ),
    )
    caps = model.capabilities()
    assert caps["fused_attention"] is False
    assert [(p["layer"], p["type"], p["path"]) for p in caps["attention"]] == [
        (0, "a", "explicit"),
        (1, "c", "explicit"),
        (3, "a", "explicit"),
        (4, "c", "explicit"),
    ]
    assert caps["attention"][0]["explicit_because"] == ("residual attention",)
    assert caps["attention"][1]["explicit_because"] == ("sparse_topk=2",)
    gqa = TransformerWrapper(
        num_tokens=32, max_seq_len=16, attn_layers=Decoder(dim=DIM, depth=1, attn_kv_heads=2)
    )
    assert gqa.capabilities()["fused_attention"] is True


def test_return_attn_runs_the_explicit_path_for_that_call_only():
    """A fused layer still returns maps when asked; they are the softmax of its logits."""
    torch.manual_seed(0)
    m = Attention(DIM, heads=2, causal=True, dim_head=8).eval()
    x = torch.randn(1, 4, DIM)
    with torch.no_grad():
        out, inter = m(x, return_intermediates=True, return_attn=True)
        plain, plain_inter = m(x, return_intermediates=True)
    assert m.path == "fused"
    assert plain_inter.post_softmax_attn is None  # the fused path materialises no map
    torch.testing.assert_close(out, plain, atol=1e-6, rtol=1e-6)
    expected = inter.pre_softmax_attn.softmax(-1)
    torch.testing.assert_close(inter.post_softmax_attn, expected)
    assert torch.equal(inter.post_softmax_attn.triu(1), torch.zeros(1, 2, 4, 4))


def test_gqa_cache_holds_only_kv_heads():
    model = TransformerWrapper(
        num_tokens=32,
        max_seq_len=16,
        attn_layers=Decoder(dim=DIM, depth=2, heads=4, attn_dim_head=4, attn_kv_heads=2),
    ).eval()
    x = torch.randint(0, 32, (3, 5))
    with torch.no_grad():
        _, inter = model(x, return_intermediates=True)
    for layer in inter.cache.layers:
        assert layer.k.shape[:2] == (3, 2) and layer.k.shape[-1] == 4
        assert layer.v.shape[:2] == (3, 2)
    mqa = TransformerWrapper(
        num_tokens=32,
        max_seq_len=16,
        attn_layers=Decoder(dim=DIM, depth=1, heads=4, attn_one_kv_head=True, attn_num_mem_kv=2),
    ).eval()
    with torch.no_grad():
        _, inter = mqa(x, return_intermediates=True)
    assert inter.cache.layers[0].k.shape[:3] == (3, 1, inter.cache.layers[0].k.shape[2])
    assert inter.cache.length == 5  # memory keys are not cached


def test_prepended_keys_reopen_rows_that_had_no_key():
    """With memory keys, a query whose sequence keys are all masked attends to the memory only."""
    from anyformer.nn.memory_kv import prepend_keys

    keep = torch.tensor([[True, False], [False, False]])[None, None]
    row_valid = keep.any(-1, keepdim=True)
    mask = AttentionMask(mask=keep | ~row_valid, row_valid=row_valid)
    out = prepend_keys(mask, 1, 2, 2, torch.device("cpu"))
    assert out.row_valid is None
    assert torch.equal(out.mask[0, 0], torch.tensor([[True, True, False], [True, False, False]]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["qk_norm_dim_scale_gqa", "all"])
def test_low_precision_autocast_matches_float32(dtype, name):
    fused, explicit = _pair(FUSED_OPTIONS[name], causal=True)
    x = torch.randn(2, 6, DIM)
    with torch.no_grad():
        reference = fused(x)
        with torch.autocast("cpu", dtype=dtype):
            low = fused(x)
            low_explicit = explicit(x)
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    torch.testing.assert_close(low.float(), reference, atol=tol, rtol=tol)
    torch.testing.assert_close(low_explicit.float(), reference, atol=tol, rtol=tol)
