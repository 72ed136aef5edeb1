"""Norms: the seed design's bias-less LayerNorm, checked against float64 hand computations."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer.nn.norms import LayerNorm

EPS = 1e-5  # the seed's LayerNorm epsilon (x-transformers 1.28.2 uses torch's default, 1e-5)


def test_layer_norm_is_bias_free():
    norm = LayerNorm(8)
    assert norm.bias is None and norm.weight.shape == (8,)
    # a learned gain and nothing else: no bias parameter, none in a checkpoint either
    assert [name for name, _ in norm.named_parameters()] == ["weight"]
    assert list(norm.state_dict()) == ["weight"]
    assert torch.equal(norm.weight.detach(), torch.ones(8))  # starts as the identity gain


def test_layer_norm_matches_hand_computation_in_float64():
    torch.manual_seed(0)
    norm = LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
    x = torch.randn(3, 6, dtype=torch.float64)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + EPS) * norm.weight
    torch.testing.assert_close(norm(x), expected)


@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(min_value=2, max_value=48),
    rows=st.integers(min_value=1, max_value=4),
    shift=st.floats(min_value=-100.0, max_value=100.0),
    scale=st.floats(min_value=0.1, max_value=50.0),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_layer_norm_rows_have_zero_mean_unit_variance_times_gain(dim, rows, shift, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64) * scale + shift
    gain = torch.rand(dim, generator=g, dtype=torch.float64) + 0.5  # in [0.5, 1.5): no zeros
    norm = LayerNorm(dim).double()
    with torch.no_grad():
        norm.weight.copy_(gain)
    unit = norm(x) / gain  # divide the gain back out, channel by channel
    var = x.var(-1, unbiased=False)
    # per row: mean 0, and variance var / (var + eps), i.e. 1 up to the epsilon
    torch.testing.assert_close(
        unit.mean(-1), torch.zeros(rows, dtype=torch.float64), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(
        unit.var(-1, unbiased=False), var / (var + EPS), atol=1e-9, rtol=1e-9
    )


# --- DyT and the adaptive norms (residual streams issue) -----------------------------------


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(min_value=1, max_value=32),
    alpha=st.floats(min_value=0.05, max_value=4.0),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_dynamic_tanh_is_the_papers_formula_float64(dim, alpha, seed):
    """DyT (https://arxiv.org/abs/2503.10622): gamma * tanh(alpha x) + beta, elementwise."""
    from anyformer.nn.dyt import DynamicTanh

    g = torch.Generator().manual_seed(seed)
    norm = DynamicTanh(dim, init_alpha=alpha).double()
    a = norm.alpha.item()  # the float32 initial value, cast
    assert abs(a - alpha) <= 1e-6 * alpha and torch.equal(norm.weight, torch.ones(dim).double())
    with torch.no_grad():
        norm.weight.copy_(torch.randn(dim, generator=g, dtype=torch.float64))
        norm.bias.copy_(torch.randn(dim, generator=g, dtype=torch.float64))
    x = torch.randn(3, 5, dim, generator=g, dtype=torch.float64) * 3
    for i, j, c in [(0, 0, 0), (2, 4, dim - 1), (1, 2, dim // 2)]:
        v = x[i, j, c].item()
        expected = norm.weight[c].item() * math.tanh(a * v) + norm.bias[c].item()
        assert abs(norm(x)[i, j, c].item() - expected) < 1e-12


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(min_value=2, max_value=24),
    dim_condition=st.integers(min_value=1, max_value=12),
    per_token=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_adaptive_norms_scale_the_plain_norm_by_one_plus_a_map_of_the_condition(
    dim, dim_condition, per_token, seed
):
    """adaLN (DiT): norm(x) * (1 + W c); RMS: x / sqrt(mean x^2 + eps); zero W at the start."""
    from anyformer.nn.adaptive_norm import AdaptiveLayerNorm, AdaptiveRMSNorm

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, dim, generator=g, dtype=torch.float64) * 2 + 1
    shape = (2, 4, dim_condition) if per_token else (2, dim_condition)
    cond = torch.randn(*shape, generator=g, dtype=torch.float64)
    c = cond if per_token else cond[:, None]
    for cls, eps in ((AdaptiveLayerNorm, 1e-5), (AdaptiveRMSNorm, 1e-12)):
        norm = cls(dim, dim_condition, eps=eps).double()
        if cls is AdaptiveLayerNorm:
            mean = x.mean(-1, keepdim=True)
            plain = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
        else:
            plain = x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps)
        torch.testing.assert_close(norm(x, cond), plain, atol=1e-12, rtol=0)  # W = 0
        w = torch.randn(dim, dim_condition, generator=g, dtype=torch.float64)
        with torch.no_grad():
            norm.to_gamma.weight.copy_(w)
        expected = plain * (1 + torch.einsum("bnc,dc->bnd", c.expand(2, 4, -1), w))
        torch.testing.assert_close(norm(x, cond), expected, atol=1e-12, rtol=0)
