"""Norms: the seed design's bias-less LayerNorm."""

import torch

from anyformer.nn.norms import LayerNorm


def test_layer_norm_is_bias_free():
    norm = LayerNorm(8)
    assert norm.bias is None and norm.weight.shape == (8,)


def test_layer_norm_matches_hand_computation_in_float64():
    torch.manual_seed(0)
    norm = LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
    x = torch.randn(3, 6, dtype=torch.float64)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
