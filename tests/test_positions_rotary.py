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


# ----------------------------------------------------------------------- rotary_scaling
# Frequencies written out in float64 from the papers (Llama 3 report section 3 / its reference
# code; YaRN eq. 17-21; dynamic NTK; LongRoPE), independently of anyformer's implementation.

from anyformer.nn.positions.rotary_scaling import RotaryScaling  # noqa: E402


def _plain(rot: int, theta: float) -> list[float]:
    return [theta ** (-2 * i / rot) for i in range(rot // 2)]


def _llama3_float64(rot, theta, s, original, low, high):
    out = []
    for w in _plain(rot, theta):
        wavelength = 2 * math.pi / w
        if wavelength < original / high:
            out.append(w)
        elif wavelength > original / low:
            out.append(w / s)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append((1 - smooth) * w / s + smooth * w)
    return out


def _yarn_float64(rot, theta, s, original, beta_fast, beta_slow, truncate):
    def dim_of(rotations):  # the dimension whose pair turns `rotations` times over `original`
        return rot * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot - 1)
    out = []
    for i, w in enumerate(_plain(rot, theta)):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)  # 0: extrapolate, 1: interpolate
        out.append(w * (1 - ramp) + (w / s) * ramp)
    return out


def _rotate_by(t: torch.Tensor, positions, freqs, factor=1.0) -> torch.Tensor:
    """Rotate t (n, d) by p * freqs[i] (float64), cos/sin times factor."""
    t = t.double().clone()
    half = len(freqs)
    out = t.clone()
    for row, p in enumerate(positions):
        for i, w in enumerate(freqs):
            c, s_ = factor * math.cos(p * w), factor * math.sin(p * w)
            a, b = t[row, i].item(), t[row, i + half].item()
            out[row, i] = a * c - b * s_
            out[row, i + half] = b * c + a * s_
    return out


def _scaled(kind, rot=16, head_dim=16, theta=10000.0, **kw):
    return RotaryEmbedding(rot, head_dim=head_dim, theta=theta, scaling=RotaryScaling(kind, **kw))


def test_llama3_frequencies_are_the_published_bands():
    # theta 100 over 16 features: wavelengths 6.3 .. 3500, so the three bands are all used
    rot, theta, s, original, low, high = 16, 100.0, 8.0, 64, 1.0, 4.0
    module = _scaled("llama3", rot, theta=theta, original_max_seq_len=original, factor=s,
                     low_freq_factor=low, high_freq_factor=high)  # fmt: skip
    expected = _llama3_float64(rot, theta, s, original, low, high)
    wavelengths = [2 * math.pi / w for w in _plain(rot, theta)]
    assert min(wavelengths) < original / high and max(wavelengths) > original / low
    assert any(original / high < x < original / low for x in wavelengths)
    assert torch.allclose(module.inv_freq.double(), torch.tensor(expected, dtype=torch.float64),
                          rtol=1e-6, atol=0)  # fmt: skip
    torch.manual_seed(1)
    t = torch.randn(4, 16)
    positions = [0, 5, 100, 3000]
    got = _rotate(module, t, torch.tensor(positions))
    assert (got.double() - _rotate_by(t, positions, expected)).abs().max() < 1e-3


@pytest.mark.parametrize("truncate", [True, False])
def test_yarn_frequencies_ramp_and_attention_factor(truncate):
    rot, theta, s, original = 16, 100.0, 4.0, 64
    module = _scaled("yarn", rot, theta=theta, original_max_seq_len=original, factor=s,
                     beta_fast=4.0, beta_slow=1.0, truncate=truncate)  # fmt: skip
    expected = _yarn_float64(rot, theta, s, original, 4.0, 1.0, truncate)
    plain = _plain(rot, theta)
    # some pairs extrapolated (kept), some interpolated (divided by s), the ramp between
    assert expected[0] == plain[0] and math.isclose(expected[-1], plain[-1] / s)
    assert torch.allclose(module.inv_freq.double(), torch.tensor(expected, dtype=torch.float64),
                          rtol=1e-6, atol=0)  # fmt: skip
    mscale = 0.1 * math.log(s) + 1  # YaRN eq. 21 (sqrt(1/t) applied to cos and sin)
    assert module.cos_sin_factor == pytest.approx(mscale)
    torch.manual_seed(2)
    t = torch.randn(3, 16)
    positions = [1, 40, 250]
    got = _rotate(module, t, torch.tensor(positions))
    assert (got.double() - _rotate_by(t, positions, expected, mscale)).abs().max() < 1e-4


def test_dynamic_ntk_base_follows_the_current_length():
    rot, theta, s, original = 16, 10000.0, 4.0, 32
    module = _scaled("dynamic", rot, theta=theta, original_max_seq_len=original, factor=s)
    torch.manual_seed(3)
    t = torch.randn(50, 16)
    for n in (20, 32, 50):  # up to the original length: plain rotary; beyond: a larger base
        length = max(n, original)
        base = theta * (s * length / original - (s - 1)) ** (rot / (rot - 2))
        expected = _rotate_by(t[:n], range(n), _plain(rot, base))
        got = _rotate(module, t[:n], torch.arange(n))
        assert (got.double() - expected).abs().max() < 1e-4, n
    # the rows of a longer sequence are rotated differently from the same rows alone
    assert not torch.allclose(_rotate(module, t, torch.arange(50))[:20],
                              _rotate(module, t[:20], torch.arange(20)), atol=1e-3)  # fmt: skip


def test_longrope_switches_factors_past_the_original_length():
    rot, theta, original, s = 8, 10000.0, 16, 4.0
    short, long = (1.0, 1.5, 2.0, 3.0), (1.0, 2.0, 4.0, 8.0)
    module = _scaled("longrope", rot, head_dim=12, theta=theta, original_max_seq_len=original,
                     factor=s, short_factor=short, long_factor=long)  # fmt: skip
    factor = math.sqrt(1 + math.log(s) / math.log(original))
    torch.manual_seed(4)
    t = torch.randn(20, 12)
    for n, divisors in ((16, short), (20, long)):
        freqs = [w / f for w, f in zip(_plain(rot, theta), divisors)]
        expected = _rotate_by(t[:n, :rot], range(n), freqs, factor)
        got = _rotate(module, t[:n], torch.arange(n))
        assert (got[:, :rot].double() - expected).abs().max() < 1e-4
        assert torch.equal(got[:, rot:], t[:n, rot:])  # partial rotary: the rest unchanged


@pytest.mark.parametrize(
    "scaling",
    [
        dict(rotary_scaling="llama3", rotary_scaling_factor=8.0, rotary_original_max_seq_len=8),
        dict(rotary_scaling="yarn", rotary_scaling_factor=4.0, rotary_original_max_seq_len=8),
        dict(rotary_scaling="dynamic", rotary_scaling_factor=2.0, rotary_original_max_seq_len=8),
        dict(rotary_scaling="longrope", rotary_scaling_factor=2.0, rotary_original_max_seq_len=8,
             rotary_short_factor=(1.0, 1.2, 1.5, 2.0), rotary_long_factor=(1.0, 2.0, 3.0, 4.0)),
    ],
    ids=["llama3", "yarn", "dynamic", "longrope"],
)  # fmt: skip
def test_scaled_rotary_cached_decoding_equals_a_full_forward_before_the_switch(scaling):
    """Llama 3 / YaRN: fixed tables, so a cached decode equals the full forward at every length;
    dynamic / longrope: the same up to the original length (beyond it each step rotates only
    its new rows with the frequencies of its length; see rotary_scaling.py)."""
    torch.manual_seed(5)
    model = TransformerWrapper(
        num_tokens=50, max_seq_len=64, attn_layers=Decoder(
            dim=32, depth=2, heads=4, attn_dim_head=8, rotary_pos_emb=True, rotary_emb_dim=8,
            **scaling,
        ),
    ).eval()  # fmt: skip
    ids = torch.randint(0, 50, (2, 20))
    n = 20 if scaling["rotary_scaling"] in ("llama3", "yarn") else 8
    with torch.no_grad():
        full = model(ids[:, :n])
        logits, cache = model(ids[:, :3], return_intermediates=True)
        steps = [logits]
        for i in range(3, n):
            logits, cache = model(ids[:, : i + 1], cache=cache, return_intermediates=True)
            steps.append(logits[:, -1:])
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5
    rot = model.attn_layers.rotary
    assert rot.scaling is not None and rot.scaling.kind == scaling["rotary_scaling"]


def test_scaling_keywords_change_nothing_when_off_and_save_with_the_model(tmp_path):
    from anyformer.serialization import load_pretrained, save_pretrained

    plain = Decoder(dim=16, depth=1, heads=2, rotary_pos_emb=True)
    assert plain.rotary.scaling is None and plain.rotary.cos_sin_factor == 1.0
    model = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=Decoder(
        dim=16, depth=1, heads=2, rotary_pos_emb=True, rotary_emb_dim=8,
        rotary_scaling="longrope", rotary_original_max_seq_len=4, rotary_attn_factor=1.5,
        rotary_short_factor=(1.0, 1.0, 2.0, 2.0), rotary_long_factor=(1.0, 2.0, 3.0, 4.0)))  # fmt: skip
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path)
    p = loaded.attn_layers.config.positions
    assert p.rotary_short_factor == (1.0, 1.0, 2.0, 2.0) and p.rotary_attn_factor == 1.5
    ids = torch.randint(0, 20, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model.eval()(ids))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rotary_scaling": "ntk"}, "rotary_scaling must be None or one of 'llama3'"),
        ({"rotary_scaling": "yarn", "rotary_scaling_factor": 2.0},
         "rotary_scaling='yarn' needs rotary_original_max_seq_len"),
        ({"rotary_yarn_beta_fast": 8.0}, "rotary_yarn_beta_fast was set but rotary_scaling=None"),
        ({"rotary_scaling": "llama3", "rotary_original_max_seq_len": 8, "rotary_yarn_truncate": False},
         "rotary_yarn_truncate was set but rotary_scaling='llama3' does not use it"),
        ({"rotary_scaling": "llama3", "rotary_original_max_seq_len": 8,
          "rotary_low_freq_factor": 4.0, "rotary_high_freq_factor": 2.0},
         "rotary_high_freq_factor must be > rotary_low_freq_factor"),
        ({"rotary_scaling": "dynamic", "rotary_original_max_seq_len": 8,
          "rotary_scaling_factor": 0.5}, "rotary_scaling_factor must be >= 1, got 0.5"),
        ({"rotary_scaling": "yarn", "rotary_original_max_seq_len": 8,
          "rotary_interpolation_factor": 2.0},
         "rotary_interpolation_factor cannot be combined with rotary_scaling='yarn'"),
        ({"rotary_scaling": "longrope", "rotary_original_max_seq_len": 8},
         "rotary_scaling='longrope' needs rotary_short_factor"),
        ({"rotary_scaling": "longrope", "rotary_original_max_seq_len": 8,
          "rotary_short_factor": (1.0,), "rotary_long_factor": (1.0,)},
         r"rotary_short_factor needs one factor per rotated pair \(4 for rotary_emb_dim=8\)"),
        ({"rotary_short_factor": [1.0]}, "rotary_short_factor must be tuple"),
    ],
)  # fmt: skip
def test_scaling_keyword_errors_name_the_keyword(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, rotary_pos_emb=True, **kwargs)


def test_scaling_without_rotary_names_rotary_pos_emb():
    with pytest.raises(ValueError, match="rotary_scaling was set but rotary_pos_emb=False"):
        Decoder(dim=16, depth=1, heads=2, rotary_scaling="yarn", rotary_original_max_seq_len=8)


def test_scaled_rotary_has_no_x_transformers_layout():
    from anyformer.convert import to_x_transformers_state_dict

    model = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=Decoder(
        dim=16, depth=1, heads=2, rotary_pos_emb=True, rotary_scaling="llama3",
        rotary_original_max_seq_len=8, rotary_scaling_factor=2.0))  # fmt: skip
    with pytest.raises(ValueError, match="x-transformers has no rotary_scaling='llama3'"):
        to_x_transformers_state_dict(model)
