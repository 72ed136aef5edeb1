"""Norms: the seed design's bias-less LayerNorm, checked against float64 hand computations."""

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
