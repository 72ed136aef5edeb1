"""Rotary embedding and its family, against float64 hand computations of the published formulas:
RoFormer (q . k depends only on the distance), xPos (reciprocal scales), position interpolation,
NTK-aware base rescaling, partial rotary; the table grows without new buffers; meta-device init."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer import Decoder, TransformerWrapper
from anyformer.nn.positions import RotaryEmbedding, apply_rotary


def _rotate_float64(t: torch.Tensor, positions: list[float], rot: int, base: float) -> torch.Tensor:
    """Rotate pairs (i, i + rot/2) of the first rot features of t (n, d) by p * base^(-2i/rot)."""
    t = t.double().clone()
    half = rot // 2
    for row, p in enumerate(positions):
        for i in range(half):
            angle = p * base ** (-2 * i / rot)
            a, b = t[row, i].item(), t[row, i + half].item()
            t[row, i] = a * math.cos(angle) - b * math.sin(angle)
            t[row, i + half] = b * math.cos(angle) + a * math.sin(angle)
    return t


def _rotate(module: RotaryEmbedding, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate t (n, d) as a query at `positions` (n,) through the module."""
    q, _ = module(t[None, None], t[None, None], positions[None])
    return q[0, 0]


def test_rotation_is_the_published_formula_with_the_rest_unchanged():
    torch.manual_seed(0)
    t = torch.randn(5, 12)
    positions = [0, 1, 7, 300, 2000]  # 2000 lies beyond the initial table: it grows
    module = RotaryEmbedding(8, head_dim=12, theta=10000.0).double()
    module.reset_parameters()
    got = _rotate(module, t.double(), torch.tensor(positions))
    expected = _rotate_float64(t, positions, 8, 10000.0)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    assert torch.equal(got[:, 8:], t[:, 8:].double())  # partial rotary: 8.. pass unchanged
    # float32 (the default): the angle p * inv_freq carries a relative error of 2^-24
    got32 = _rotate(RotaryEmbedding(8, head_dim=12), t, torch.tensor(positions))
    torch.testing.assert_close(got32.double(), expected, atol=2000 * 2**-24 * 4, rtol=0)


@settings(max_examples=25, deadline=None)
@given(
    p=st.integers(0, 3000),
    q_shift=st.integers(0, 3000),
    offset=st.integers(0, 3000),
    seed=st.integers(0, 2**16),
)
def test_query_key_product_depends_only_on_the_distance(p, q_shift, offset, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 16, generator=gen), torch.randn(1, 16, generator=gen)
    module = RotaryEmbedding(16).double()
    module.reset_parameters()

    def score(q_pos: int, k_pos: int) -> float:
        rq = _rotate(module, q.double(), torch.tensor([q_pos]))
        rk = _rotate(module, k.double(), torch.tensor([k_pos]))
        return (rq * rk).sum().item()

    assert score(p + q_shift, p) == pytest.approx(score(p + q_shift + offset, p + offset), abs=1e-8)


def test_xpos_scales_queries_and_keys_reciprocally():
    """xPos: q . k = sum_i rotated-product_i * zeta_i ** ((p_q - p_k) / scale_base), whatever the
    centre, with zeta_i = (2i + 0.4 r) / (1.4 r) (Sun et al. 2022)."""
    torch.manual_seed(1)
    r, scale_base = 8, 16.0
    module = RotaryEmbedding(r, xpos_scale_base=scale_base).double()
    module.reset_parameters()
    plain = RotaryEmbedding(r).double()
    plain.reset_parameters()
    q, k = torch.randn(1, 1, 1, r).double(), torch.randn(1, 1, 1, r).double()
    for q_pos, k_pos in ((9, 3), (40, 40), (5, 30)):
        positions = torch.tensor([[q_pos, k_pos]])
        rot = module.angles(positions)  # centre (max + 1) // 2 of these positions
        rq = apply_rotary(q, rot.q_cos[..., :1, :], rot.q_sin[..., :1, :], r)
        rk = apply_rotary(k, rot.k_cos[..., 1:, :], rot.k_sin[..., 1:, :], r)
        pq, _ = plain(q, q, torch.tensor([[q_pos]]))
        pk, _ = plain(k, k, torch.tensor([[k_pos]]))
        zeta = [(2 * i + 0.4 * r) / (1.4 * r) for i in range(r // 2)] * 2
        decay = torch.tensor(
            [z ** ((q_pos - k_pos) / scale_base) for z in zeta], dtype=torch.double
        )
        expected = (pq * pk * decay).sum()
        assert (rq * rk).sum().item() == pytest.approx(expected.item(), rel=1e-9)
    # the scales themselves: q's is the reciprocal of k's at the same position
    rot = module.angles(torch.tensor([[3, 11]]))
    product = (rot.q_cos**2 + rot.q_sin**2) * (rot.k_cos**2 + rot.k_sin**2)  # scale^2 / scale^2
    torch.testing.assert_close(product, torch.ones_like(product), atol=1e-12, rtol=0)


def test_interpolation_factor_maps_position_p_to_p_over_f():
    torch.manual_seed(2)
    t = torch.randn(4, 8).double()
    stretched = RotaryEmbedding(8, interpolation_factor=4.0).double()
    stretched.reset_parameters()
    got = _rotate(stretched, t, torch.tensor([0, 2, 9, 401]))
    expected = _rotate_float64(t, [0, 0.5, 2.25, 100.25], 8, 10000.0)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


def test_ntk_base_rescale_and_theta_change_the_base():
    torch.manual_seed(3)
    t = torch.randn(3, 8).double()
    positions = [1, 17, 250]
    ntk = RotaryEmbedding(8, theta=10000.0, base_rescale_factor=4.0).double()
    ntk.reset_parameters()
    expected = _rotate_float64(t, positions, 8, 10000.0 * 4.0 ** (8 / 6))
    torch.testing.assert_close(
        _rotate(ntk, t, torch.tensor(positions)), expected, atol=1e-10, rtol=0
    )
    llama3 = RotaryEmbedding(8, theta=500000.0).double()
    llama3.reset_parameters()
    expected = _rotate_float64(t, positions, 8, 500000.0)
    torch.testing.assert_close(
        _rotate(llama3, t, torch.tensor(positions)), expected, atol=1e-10, rtol=0
    )


def test_table_grows_in_place_of_the_same_buffers():
    module = RotaryEmbedding(8)
    names = sorted(n for n, _ in module.named_buffers())
    first = module.cos_table.shape[0]
    cos, _ = module._table(first + 5, 3)  # beyond the table: it doubles
    assert module.cos_table.shape[0] == 2 * first
    assert sorted(n for n, _ in module.named_buffers()) == names
    expected = torch.tensor([[math.cos(p * 10000 ** (-2 * i / 8)) for i in range(4)]
                             for p in range(first + 5, first + 8)])  # fmt: skip
    torch.testing.assert_close(cos[:, :4].double(), expected.double(), atol=1e-4, rtol=0)
    torch.testing.assert_close(cos[:, 4:].double(), expected.double(), atol=1e-4, rtol=0)


def test_stack_builds_one_rotary_module_shared_by_its_self_attention():
    stack = Decoder(dim=16, depth=3, heads=2, attn_dim_head=8, rotary_pos_emb=True)
    shared = [block.branch.position for block in stack.layers if block.layer_type == "a"]
    assert len(shared) == 3 and all(p is stack.rotary for p in shared)
    assert stack.rotary.dim == 8  # default max(dim_head // 2, 32), at most dim_head
    assert Decoder(dim=16, depth=1, attn_dim_head=128, rotary_pos_emb=True).rotary.dim == 64
    assert Decoder(dim=16, depth=1, attn_dim_head=64, rotary_pos_emb=True).rotary.dim == 32
    assert Decoder(dim=16, depth=1, rotary_pos_emb=True, rotary_emb_dim=16).rotary.dim == 16
    assert not any(".rotary" in k or "position" in k for k in stack.state_dict())


def test_meta_device_build_recomputes_the_tables():
    kw = dict(dim=16, depth=1, heads=2, attn_dim_head=8, rotary_xpos=True, rotary_pos_emb=True)
    with torch.device("meta"):
        model = TransformerWrapper(num_tokens=8, max_seq_len=0, attn_layers=Decoder(**kw))
    model.to_empty(device="cpu")
    model.reset_parameters()
    rotary = model.attn_layers.rotary
    inv_freq = torch.tensor([10000 ** (-2 * i / 8) for i in range(4)], dtype=torch.double)
    torch.testing.assert_close(rotary.inv_freq.double(), inv_freq, atol=0, rtol=1e-6)
    zeta = torch.tensor([(2 * i + 3.2) / 11.2 for i in range(4)], dtype=torch.double)
    torch.testing.assert_close(rotary.xpos_zeta.double(), zeta, atol=0, rtol=1e-6)
    p = torch.arange(rotary.cos_table.shape[0], dtype=torch.double)[:, None]
    cos, sin = (p * inv_freq).cos(), (p * inv_freq).sin()
    torch.testing.assert_close(
        rotary.cos_table.double(), torch.cat((cos, cos), -1), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        rotary.sin_table.double(), torch.cat((-sin, sin), -1), atol=1e-4, rtol=0
    )


# ---------------------------------------------------------------- forward(rotary_pos_emb=...)


def _twins(**kw: object) -> tuple:
    """The same Decoder in x-transformers 1.28.2 and anyformer, same weights, eval mode."""
    import x_transformers as xt

    from anyformer.convert import load_x_transformers_state_dict

    # dim_head 64; rotary_emb_dim 32 (1.28.2 raises any smaller width to 32)
    stack = dict(dim=32, depth=2, heads=4, rotary_pos_emb=True, rotary_emb_dim=32, **kw)
    torch.manual_seed(0)
    theirs = xt.TransformerWrapper(num_tokens=50, max_seq_len=0, attn_layers=xt.Decoder(**stack))
    ours = TransformerWrapper(num_tokens=50, max_seq_len=0, attn_layers=Decoder(**stack))
    load_x_transformers_state_dict(ours, theirs.state_dict())
    return theirs.eval(), ours.eval()


@pytest.mark.parametrize(
    "freqs_of",
    [
        pytest.param(lambda rot, n: rot(torch.arange(n) * 3 + 7), id="spread-positions"),
        pytest.param(lambda rot, n: (torch.rand(n, 8) * 6, 1.0), id="arbitrary-angles-per-feature"),
        pytest.param(lambda rot, n: (torch.rand(2, n, 8) * 6, None), id="per-row-batch-angles"),
        pytest.param(
            lambda rot, n: (torch.rand(n, 64) * 6, 0.5 + torch.rand(n, 64)), id="xpos-scale"
        ),
    ],
)
def test_given_rotary_frequencies_match_x_transformers(freqs_of):
    """Precomputed (freqs, xpos_scale), x-transformers' format, give its logits: the scheme of
    the stack is replaced (widths 32 (the stack's own) and 64 = dim_head)."""
    theirs, ours = _twins()
    x = torch.randint(0, 50, (2, 11))
    torch.manual_seed(1)
    given = freqs_of(theirs.attn_layers.rotary_pos_emb, 11)
    expected = theirs(x, rotary_pos_emb=given)
    torch.testing.assert_close(ours(x, rotary_pos_emb=given), expected, atol=1e-5, rtol=0)
    # and the stack's own positions give something else (the keyword is not ignored)
    assert (ours(x) - expected).abs().max() > 1e-3


def test_given_partial_rotary_leaves_the_other_features_alone():
    """freqs of width 4 on heads of 64 (partial rotary), as x-transformers applies them."""
    theirs, ours = _twins()
    x = torch.randint(0, 50, (1, 9))
    given = (torch.rand(9, 4) * 3, None)
    expected = theirs(x, rotary_pos_emb=given)
    torch.testing.assert_close(ours(x, rotary_pos_emb=given), expected, atol=1e-5, rtol=0)


def test_given_rotary_uses_the_last_rows_so_cached_decoding_matches():
    """With a cache, each call computes the last rows of freqs: decoding token by token with
    the whole table equals one uncached forward with it."""
    from anyformer.cache import KVCache

    _, ours = _twins()
    x = torch.randint(0, 50, (2, 10))
    freqs = torch.rand(10, 64) * 5
    full = ours(x, rotary_pos_emb=(freqs, None))
    cache = KVCache()
    steps = [ours(x[:, :4], cache=cache, rotary_pos_emb=(freqs[:4], None))]
    for i in range(4, 10):
        steps.append(
            ours(
                x[:, i : i + 1],
                cache=cache,
                input_not_include_cache=True,
                rotary_pos_emb=freqs[: i + 1],
            )
        )
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_given_rotary_errors_name_the_problem():
    plain = Decoder(dim=16, depth=1, heads=2)
    h = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match="no rotary positions: build it with rotary_pos_emb=True"):
        plain(h, rotary_pos_emb=(torch.zeros(5, 8), None))
    stack = Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, rotary_pos_emb=True)
    with pytest.raises(
        ValueError, match=r"freqs' last dim \(rot_dim\) must be even and in \[2, 8\]"
    ):
        stack(h, rotary_pos_emb=(torch.zeros(5, 10), None))
    with pytest.raises(ValueError, match="freqs have 3 rows but this call computes 5"):
        stack(h, rotary_pos_emb=(torch.zeros(3, 8), None))
    with pytest.raises(ValueError, match=r"of shape \(seq_len, rot_dim\) or \(1, seq_len"):
        stack(h, rotary_pos_emb=(torch.zeros(5, dtype=torch.long), None))
    with pytest.raises(ValueError, match="xpos_scale must be None, a number or a tensor"):
        stack(h, rotary_pos_emb=(torch.zeros(5, 8), "1"))


def test_given_rotary_covers_transformer_xl_memories_first():
    """With mems, freqs hold the memories' rows, then the segment's (x-transformers' keys)."""
    theirs, ours = _twins()
    x = torch.randint(0, 50, (2, 6))
    mems = [torch.randn(2, 3, 32) for _ in range(2)]
    given = (torch.rand(9, 64) * 4, None)
    expected = theirs(x, mems=mems, rotary_pos_emb=given)
    torch.testing.assert_close(
        ours(x, mems=mems, rotary_pos_emb=given), expected, atol=1e-5, rtol=0
    )
