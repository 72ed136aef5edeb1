"""The attention kernel: fused (SDPA) and explicit paths agree, and both match a hand computation.

Every model-level comparison builds a model with ``attn_flash=False``, copies its weights into an
otherwise identical model with ``attn_flash=True`` and compares the outputs to 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch

from anyformer import (
    Attention,
    Decoder,
    Encoder,
    PrefixDecoder,
    TransformerWrapper,
)
from anyformer.nn.attend import Attend
from anyformer.nn.masks import AttentionMask, build_attention_mask, causal_keep_mask

TOL = dict(atol=1e-5, rtol=1e-5)
V = 29  # vocabulary
DIM = 32
HEADS = 4
DIM_HEAD = 8


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# --------------------------------------------------------------------------- helpers


def stack_pair(cls, seed: int = 0, **kwargs):
    """(explicit, fused) stacks with the same weights."""
    torch.manual_seed(seed)
    common = dict(dim=DIM, depth=2, heads=HEADS, attn_dim_head=DIM_HEAD, **kwargs)
    slow = cls(attn_flash=False, **common).eval()
    fast = cls(attn_flash=True, **common).eval()
    fast.load_state_dict(slow.state_dict())
    return slow, fast


def wrapper_pair(cls, seed: int = 0, max_seq_len: int = 32, **kwargs):
    """(explicit, fused) TransformerWrappers with the same weights."""
    torch.manual_seed(seed)

    def build(flash: bool) -> TransformerWrapper:
        layers = cls(
            dim=DIM, depth=2, heads=HEADS, attn_dim_head=DIM_HEAD, attn_flash=flash, **kwargs
        )
        return TransformerWrapper(num_tokens=V, max_seq_len=max_seq_len, attn_layers=layers).eval()

    slow = build(False)
    fast = build(True)
    fast.load_state_dict(slow.state_dict())
    return slow, fast


def both(pair, *args, **kwargs):
    slow, fast = pair
    return slow(*args, **kwargs), fast(*args, **kwargs)


def assert_paths_agree(pair, *args, **kwargs):
    out_slow, out_fast = both(pair, *args, **kwargs)
    assert not torch.isnan(out_slow).any()
    assert not torch.isnan(out_fast).any()
    torch.testing.assert_close(out_fast, out_slow, **TOL)
    return out_slow


def reference_attention(q, k, v, keep=None, scale=None):
    """float64 softmax(q k^T * scale) v; masked keys get -inf, rows with no key give zeros."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    sim = q @ k.transpose(-1, -2) * scale
    if keep is not None:
        sim = sim.masked_fill(~keep, float("-inf"))
    attn = sim.softmax(dim=-1)
    attn = torch.nan_to_num(attn, nan=0.0)  # a row of all -inf softmaxes to NaN: no key -> 0
    return attn @ v


def qkv(b=2, h=3, i=5, j=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, h, i, d, generator=g),
        torch.randn(b, h, j, d, generator=g),
        torch.randn(b, h, j, d, generator=g),
    )


def tokens(b, n, seed=0):
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


def branch_outputs(model, layer_type: str):
    """Record the output of every attention branch of `layer_type` ('a' or 'c')."""
    outs = []
    stack = model.attn_layers if isinstance(model, TransformerWrapper) else model
    handles = [
        block.branch.register_forward_hook(lambda m, args, out: outs.append(out))
        for block in stack.layers
        if block.layer_type == layer_type
    ]
    return outs, handles


# --------------------------------------------------------------------------- masks


def test_causal_mask_bottom_right_alignment():
    plan = build_attention_mask(q_len=3, k_len=5, causal=True)
    expected = torch.tensor(
        [
            [True, True, True, False, False],
            [True, True, True, True, False],
            [True, True, True, True, True],
        ]
    )
    assert plan.is_causal is False
    assert torch.equal(plan.mask.reshape(3, 5), expected)
    assert torch.equal(causal_keep_mask(3, 5), expected)


def test_causal_square_mask_uses_is_causal():
    plan = build_attention_mask(q_len=4, k_len=4, causal=True)
    assert plan.is_causal is True
    assert plan.mask is None
    assert plan.row_valid is None
    # a single query (one decode step) sees every key: nothing to mask
    step = build_attention_mask(q_len=1, k_len=6, causal=True)
    assert step == AttentionMask()
    assert torch.equal(causal_keep_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())


def test_no_mask_gives_empty_plan():
    plan = build_attention_mask(q_len=4, k_len=6, causal=False)
    assert plan.mask is None and plan.row_valid is None and plan.is_causal is False


def test_build_mask_combines_key_mask_attn_mask_and_causal():
    key_mask = torch.tensor([[True, True, True, True], [False, True, True, False]])
    attn_mask = torch.ones(4, 4, dtype=torch.bool)
    attn_mask[0, 0] = False
    plan = build_attention_mask(
        q_len=4, k_len=4, causal=True, key_mask=key_mask, attn_mask=attn_mask
    )
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    combined = key_mask[:, None, None, :] & attn_mask & causal
    assert plan.mask.shape == (2, 1, 4, 4)
    assert plan.is_causal is False
    # row valid: row 0 of batch 0 (attn_mask kills its only key) and row 0 of batch 1 are empty
    expected_valid = combined.any(-1, keepdim=True)
    assert torch.equal(plan.row_valid, expected_valid)
    assert expected_valid[0, 0, 0, 0].item() is False
    assert expected_valid[1, 0, 0, 0].item() is False
    assert int(expected_valid.sum()) == 6
    # valid rows keep exactly the combined mask; empty rows are opened (all True) to avoid NaN
    rows = expected_valid.expand_as(combined)
    assert torch.equal(plan.mask[rows], combined[rows])
    assert bool(plan.mask[~rows].all())


# --------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("flash", [False, True])
def test_attend_unmasked_matches_reference(flash):
    q, k, v = qkv(i=5, j=7)
    out, _ = Attend(flash=flash)(q, k, v)
    assert out.shape == (2, 3, 5, 8)
    torch.testing.assert_close(out, reference_attention(q, k, v).float(), **TOL)


@pytest.mark.parametrize("flash", [False, True])
def test_attend_custom_scale_matches_reference(flash):
    q, k, v = qkv(i=4, j=6, seed=1)
    out, _ = Attend(flash=flash, scale=0.3)(q, k, v)
    torch.testing.assert_close(out, reference_attention(q, k, v, scale=0.3).float(), **TOL)


@pytest.mark.parametrize("flash", [False, True])
@pytest.mark.parametrize("q_len,k_len", [(5, 5), (3, 7), (1, 6)])
def test_attend_causal_matches_reference(flash, q_len, k_len):
    q, k, v = qkv(i=q_len, j=k_len, seed=2)
    # hand-written bottom-right causal mask: query t (of the last q_len) sees keys <= its position
    keep = torch.zeros(q_len, k_len, dtype=torch.bool)
    for t in range(q_len):
        keep[t, : k_len - q_len + t + 1] = True
    plan = build_attention_mask(q_len=q_len, k_len=k_len, causal=True)
    out, _ = Attend(flash=flash)(q, k, v, plan)
    torch.testing.assert_close(out, reference_attention(q, k, v, keep).float(), **TOL)


def _key_and_attn_masks():
    key_mask = torch.tensor(
        [[True, True, True, True, False, False], [True, False, True, True, True, True]]
    )
    g = torch.Generator().manual_seed(3)
    attn_mask = torch.rand(2, 3, 4, 6, generator=g) > 0.3
    attn_mask[0, 1, 2] = False  # an empty row through attn_mask alone
    attn_mask[1, :, 0] = False  # an empty row for every head of batch 1
    return key_mask, attn_mask


@pytest.mark.parametrize("flash", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("attn_shape", [None, "ij", "hij", "bhij"])
def test_attend_masked_matches_reference(flash, causal, attn_shape):
    q, k, v = qkv(b=2, h=3, i=4, j=6, seed=4)
    key_mask, attn_mask = _key_and_attn_masks()
    attn = {None: None, "ij": attn_mask[0, 0], "hij": attn_mask[0], "bhij": attn_mask}[attn_shape]
    keep = key_mask[:, None, None, :].expand(2, 3, 4, 6)
    if attn is not None:
        keep = keep & attn
    if causal:
        keep = keep & causal_keep_mask(4, 6)
    plan = build_attention_mask(q_len=4, k_len=6, causal=causal, key_mask=key_mask, attn_mask=attn)
    out, _ = Attend(flash=flash)(q, k, v, plan)
    expected = reference_attention(q, k, v, keep).float()
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, expected, **TOL)
    empty = ~keep.any(-1)
    if attn_shape in ("hij", "bhij", "ij"):
        assert bool(empty.any())
    # rows with no key are exactly zero
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))


def test_attend_all_keys_masked_gives_zeros_both_paths():
    q, k, v = qkv(b=2, h=2, i=3, j=4, seed=5)
    key_mask = torch.tensor([[False] * 4, [True, True, False, True]])
    plan = build_attention_mask(q_len=3, k_len=4, causal=False, key_mask=key_mask)
    slow, _ = Attend(flash=False)(q, k, v, plan)
    fast, _ = Attend(flash=True)(q, k, v, plan)
    assert torch.equal(slow[0], torch.zeros(2, 3, 8))
    assert torch.equal(fast[0], torch.zeros(2, 3, 8))
    assert not torch.isnan(slow).any() and not torch.isnan(fast).any()
    torch.testing.assert_close(fast, slow, **TOL)
    torch.testing.assert_close(
        slow, reference_attention(q, k, v, key_mask[:, None, None, :]).float(), **TOL
    )


def test_attend_explicit_returns_maps_that_match_reference():
    q, k, v = qkv(b=1, h=2, i=4, j=4, seed=6)
    plan = build_attention_mask(q_len=4, k_len=4, causal=True)
    out, inter = Attend(flash=True)(q, k, v, plan, return_attn=True)
    attn = inter.post_softmax_attn
    assert attn.shape == (1, 2, 4, 4)
    sim = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(8)
    sim = sim.masked_fill(~torch.ones(4, 4, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(attn, sim.softmax(-1).float(), **TOL)
    torch.testing.assert_close(out, attn @ v, **TOL)
    assert torch.equal(attn.triu(1), torch.zeros_like(attn))


@pytest.mark.parametrize("flash", [False, True])
def test_attend_q_longer_than_k_with_key_mask(flash):
    # cross-attention shape: 6 queries, 3 keys
    q, k, v = qkv(b=2, h=2, i=6, j=3, seed=7)
    key_mask = torch.tensor([[True, False, True], [False, False, False]])
    plan = build_attention_mask(q_len=6, k_len=3, causal=False, key_mask=key_mask)
    out, _ = Attend(flash=flash)(q, k, v, plan)
    assert out.shape == (2, 2, 6, 8)
    torch.testing.assert_close(
        out, reference_attention(q, k, v, key_mask[:, None, None, :]).float(), **TOL
    )
    assert torch.equal(out[1], torch.zeros(2, 6, 8))


# --------------------------------------------------------------------------- Attention module


@pytest.mark.parametrize("flash", [False, True])
def test_attention_module_masked_row_is_zero(flash):
    torch.manual_seed(0)
    attn = Attention(DIM, heads=HEADS, dim_head=DIM_HEAD, flash=flash).eval()
    x = torch.randn(2, 5, DIM)
    attn_mask = torch.ones(5, 5, dtype=torch.bool)
    attn_mask[3] = False
    out = attn(x, attn_mask=attn_mask)
    assert out.shape == (2, 5, DIM)
    assert torch.equal(out[:, 3], torch.zeros(2, DIM))
    assert bool((out[:, [0, 1, 2, 4]].abs().sum(-1) > 0).all())


def test_attention_module_paths_agree_cross():
    torch.manual_seed(0)
    slow = Attention(DIM, heads=HEADS, dim_head=DIM_HEAD, flash=False).eval()
    fast = Attention(DIM, heads=HEADS, dim_head=DIM_HEAD, flash=True).eval()
    fast.load_state_dict(slow.state_dict())
    x, ctx = torch.randn(2, 4, DIM), torch.randn(2, 7, DIM)
    context_mask = torch.tensor([[True] * 5 + [False] * 2, [False] * 7])
    a = slow(x, context=ctx, context_mask=context_mask)
    b = fast(x, context=ctx, context_mask=context_mask)
    torch.testing.assert_close(b, a, **TOL)
    assert torch.equal(a[1], torch.zeros(4, DIM))
    assert torch.equal(b[1], torch.zeros(4, DIM))


# --------------------------------------------------------------------------- stacks / wrappers


def test_decoder_causal_paths_agree():
    pair = wrapper_pair(Decoder)
    out = assert_paths_agree(pair, tokens(3, 12), return_embeddings=True)
    assert out.shape == (3, 12, DIM)


def test_decoder_is_causal():
    # changing a later token does not change earlier outputs (either path)
    slow, fast = wrapper_pair(Decoder)
    x = tokens(2, 10, seed=1)
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % V
    for model in (slow, fast):
        a, b = model(x), model(y)
        torch.testing.assert_close(a[:, :6], b[:, :6], **TOL)
        assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-3


def test_bare_stack_paths_agree():
    pair = stack_pair(Encoder)
    x = torch.randn(2, 9, DIM, generator=torch.Generator().manual_seed(0))
    out = assert_paths_agree(pair, x)
    assert out.shape == (2, 9, DIM)
    pair = stack_pair(Decoder)
    assert_paths_agree(pair, x)


@pytest.mark.parametrize("cls", [Encoder, Decoder])
def test_key_padding_mask_paths_agree(cls):
    pair = wrapper_pair(cls)
    x = tokens(3, 10, seed=2)
    lens = torch.tensor([10, 6, 3])
    mask = torch.arange(10) < lens[:, None]  # rows 1 and 2 right-padded
    out = assert_paths_agree(pair, x, mask=mask, return_embeddings=True)
    # padded keys do not influence kept positions: change the pad tokens, same outputs
    y = x.clone()
    y[~mask] = (y[~mask] + 5) % V
    out_y = pair[0](y, mask=mask, return_embeddings=True)
    torch.testing.assert_close(out_y[mask], out[mask], **TOL)


def test_decoder_left_padding_has_empty_rows_without_nan():
    # left padding in a Decoder: the first padded query of row 1 has no key at all
    pair = wrapper_pair(Decoder)
    x = tokens(2, 8, seed=3)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, :3] = False
    assert_paths_agree(pair, x, mask=mask, return_embeddings=True)
    slow, _ = pair
    outs, handles = branch_outputs(slow, "a")
    slow(x, mask=mask)
    for h in handles:
        h.remove()
    assert len(outs) == 2
    for out in outs:
        assert torch.equal(out[1, :3], torch.zeros(3, DIM))
        assert bool((out[0].abs().sum(-1) > 0).all())


@pytest.mark.parametrize("shape", ["ij", "hij", "bhij"])
@pytest.mark.parametrize("cls", [Encoder, Decoder])
def test_attn_mask_shapes_paths_agree(shape, cls):
    pair = wrapper_pair(cls)
    b, n = 2, 7
    g = torch.Generator().manual_seed(4)
    full = torch.rand(b, HEADS, n, n, generator=g) > 0.4
    full |= torch.eye(n, dtype=torch.bool)  # every row keeps itself
    attn_mask = {"ij": full[0, 0], "hij": full[0], "bhij": full}[shape]
    x = tokens(b, n, seed=4)
    out = assert_paths_agree(pair, x, attn_mask=attn_mask, return_embeddings=True)
    # the mask matters: without it the output differs
    plain = pair[0](x, return_embeddings=True)
    assert (plain - out).abs().max() > 1e-3


def test_attn_mask_matches_equivalent_key_mask():
    slow, fast = wrapper_pair(Encoder)
    x = tokens(2, 6, seed=5)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    attn_mask = mask[:, None, None, :].expand(2, HEADS, 6, 6)
    for model in (slow, fast):
        a = model(x, mask=mask, return_embeddings=True)
        b = model(x, attn_mask=attn_mask, return_embeddings=True)
        torch.testing.assert_close(a, b, **TOL)


def test_encoder_row_with_all_keys_masked():
    pair = wrapper_pair(Encoder)
    x = tokens(2, 6, seed=6)
    attn_mask = torch.ones(6, 6, dtype=torch.bool)
    attn_mask[2] = False  # query 2 may attend to nothing
    out = assert_paths_agree(pair, x, attn_mask=attn_mask, return_embeddings=True)
    assert torch.isfinite(out).all()
    for model in pair:
        outs, handles = branch_outputs(model, "a")
        model(x, attn_mask=attn_mask)
        for h in handles:
            h.remove()
        assert len(outs) == 2
        for o in outs:
            assert torch.equal(o[:, 2], torch.zeros(2, DIM))
            assert bool((o[:, [0, 1, 3, 4, 5]].abs().sum(-1) > 0).all())


def test_cross_attention_context_mask_paths_agree():
    pair = wrapper_pair(Decoder, cross_attend=True)
    b, n, m = 3, 6, 5
    g = torch.Generator().manual_seed(7)
    x = tokens(b, n, seed=7)
    context = torch.randn(b, m, DIM, generator=g)
    context_mask = torch.tensor(
        [[True] * 5, [True, True, False, True, False], [True, False, False, False, False]]
    )
    out = assert_paths_agree(
        pair, x, context=context, context_mask=context_mask, return_embeddings=True
    )
    assert out.shape == (b, n, DIM)
    # masked context positions do not matter
    other = context.clone()
    other[~context_mask] = torch.randn(int((~context_mask).sum()), DIM, generator=g)
    out2 = pair[1](x, context=other, context_mask=context_mask, return_embeddings=True)
    torch.testing.assert_close(out2, out, **TOL)


def test_cross_attention_context_fully_masked_row():
    pair = wrapper_pair(Decoder, cross_attend=True)
    g = torch.Generator().manual_seed(8)
    x = tokens(2, 5, seed=8)
    context = torch.randn(2, 4, DIM, generator=g)
    context_mask = torch.tensor([[True, True, False, True], [False] * 4])
    out = assert_paths_agree(
        pair, x, context=context, context_mask=context_mask, return_embeddings=True
    )
    assert torch.isfinite(out).all()
    for model in pair:
        outs, handles = branch_outputs(model, "c")
        model(x, context=context, context_mask=context_mask)
        for h in handles:
            h.remove()
        assert len(outs) == 2
        for o in outs:
            assert torch.equal(o[1], torch.zeros(5, DIM))
            assert bool((o[0].abs().sum(-1) > 0).all())


@pytest.mark.parametrize("prefix", [0, 3, 7, "tensor"])
def test_prefix_decoder_paths_agree(prefix):
    pair = wrapper_pair(PrefixDecoder)
    x = tokens(3, 7, seed=9)
    prefix_attn_len = torch.tensor([0, 2, 5]) if prefix == "tensor" else prefix
    out = assert_paths_agree(pair, x, prefix_attn_len=prefix_attn_len, return_embeddings=True)
    assert out.shape == (3, 7, DIM)


def test_prefix_decoder_semantics():
    slow, fast = wrapper_pair(PrefixDecoder)
    dec_slow, _ = wrapper_pair(Decoder)
    dec_slow.load_state_dict(slow.state_dict())
    enc_slow, _ = wrapper_pair(Encoder)
    enc_slow.load_state_dict(slow.state_dict())
    x = tokens(2, 7, seed=10)
    for model in (slow, fast):
        # prefix 0 is a Decoder; a prefix covering everything is an Encoder
        torch.testing.assert_close(model(x, prefix_attn_len=0), dec_slow(x), **TOL)
        torch.testing.assert_close(model(x, prefix_attn_len=7), enc_slow(x), **TOL)
        # no prefix_attn_len: causal
        torch.testing.assert_close(model(x), dec_slow(x), **TOL)
    # per-row prefix lengths equal running each row alone with an int prefix
    lens = torch.tensor([2, 5])
    out = fast(x, prefix_attn_len=lens)
    for r in range(2):
        alone = fast(x[r : r + 1], prefix_attn_len=int(lens[r]))
        torch.testing.assert_close(out[r : r + 1], alone, **TOL)
    # prefix positions see the future within the prefix, but not beyond it
    y = x.clone()
    y[:, 4] = (y[:, 4] + 1) % V
    a, b = slow(x, prefix_attn_len=5), slow(y, prefix_attn_len=5)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % V
    a, b = slow(x, prefix_attn_len=5), slow(y, prefix_attn_len=5)
    torch.testing.assert_close(a[:, :6], b[:, :6], **TOL)


def test_prefix_decoder_with_attn_mask_paths_agree():
    pair = wrapper_pair(PrefixDecoder)
    x = tokens(2, 6, seed=11)
    attn_mask = torch.ones(6, 6, dtype=torch.bool)
    attn_mask[:, 1] = False
    attn_mask[0] = False  # query 0 ends up with no key
    out = assert_paths_agree(
        pair, x, prefix_attn_len=torch.tensor([3, 1]), attn_mask=attn_mask, return_embeddings=True
    )
    assert torch.isfinite(out).all()


def test_prefix_decoder_negative_prefix_raises():
    slow, _ = wrapper_pair(PrefixDecoder)
    with pytest.raises(ValueError, match="prefix_attn_len"):
        slow(tokens(1, 4), prefix_attn_len=-1)
    with pytest.raises(ValueError, match="prefix_attn_len"):
        slow(tokens(2, 4), prefix_attn_len=torch.tensor([1, 2, 3]))


# --------------------------------------------------------------------------- return_attn


@pytest.mark.parametrize("flash", [False, True])
def test_return_attn_decoder_maps(flash):
    slow, fast = wrapper_pair(Decoder)
    model = fast if flash else slow
    x = tokens(2, 9, seed=12)
    logits, maps = model(x, return_attn=True)
    assert logits.shape == (2, 9, V)
    assert isinstance(maps, list) and len(maps) == 2
    for a in maps:
        assert a.shape == (2, HEADS, 9, 9)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, HEADS, 9), **TOL)
        assert torch.equal(a.triu(1), torch.zeros_like(a))
        assert bool((a >= 0).all())
    # asking for the maps does not change the logits
    torch.testing.assert_close(logits, model(x), **TOL)
    torch.testing.assert_close(logits, slow(x), **TOL)


def test_return_attn_maps_respect_key_mask():
    _, fast = wrapper_pair(Encoder)
    x = tokens(2, 6, seed=13)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    _, maps = fast(x, mask=mask, return_attn=True)
    for a in maps:
        torch.testing.assert_close(a.sum(-1), torch.ones(2, HEADS, 6), **TOL)
        assert torch.equal(a[1, :, :, 3:], torch.zeros(HEADS, 6, 3))


@pytest.mark.parametrize("flash", [False, True])
def test_return_attn_fully_masked_row_sums_to_zero(flash):
    slow, fast = wrapper_pair(Encoder)
    model = fast if flash else slow
    x = tokens(2, 6, seed=14)
    attn_mask = torch.ones(6, 6, dtype=torch.bool)
    attn_mask[2] = False
    _, maps = model(x, attn_mask=attn_mask, return_attn=True)
    expected = torch.ones(2, HEADS, 6)
    expected[:, :, 2] = 0.0
    for a in maps:
        assert not torch.isnan(a).any()
        torch.testing.assert_close(a.sum(-1), expected, **TOL)
