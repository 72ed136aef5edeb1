"""Attention on its own: what a caller must pass, and the head-output modules' parameters (the
weights of linear maps read with two inputs, initialised and named as nn.Linear's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anyformer import Attention
from anyformer.nn.gates import HeadGate, ValueGate
from anyformer.nn.positions.rotary import RotaryEmbedding
from anyformer.nn.tensor_product import TensorProduct


def test_attention_with_a_rotary_module_asks_for_positions_by_name() -> None:
    attn = Attention(16, heads=2, causal=True, position=RotaryEmbedding(32, head_dim=64))
    x = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match=r"positions are required \(b\|1, n\)"):
        attn(x)
    out = attn(x, positions=torch.arange(5)[None])
    assert out.shape == (1, 5, 16)


def test_tensor_product_is_initialised_as_the_linear_layer_it_replaces() -> None:
    torch.manual_seed(3)
    tp = TensorProduct(12, kv_heads=2, value_dim=4)
    torch.manual_seed(3)
    linear = nn.Linear(12, 8, bias=False)
    assert not isinstance(tp, nn.Linear)  # its call takes (out, x): no drop-in Linear
    assert list(tp.state_dict()) == ["weight"]
    assert torch.equal(tp.weight, linear.weight)
    assert (tp.in_features, tp.out_features) == (12, 8)


@pytest.mark.parametrize("gate", [HeadGate(12, 3), ValueGate(12, 6)])
def test_gates_start_open_with_linear_parameter_names(gate: nn.Module) -> None:
    assert list(gate.state_dict()) == ["weight", "bias"]
    assert torch.count_nonzero(gate.weight) == 0
    assert torch.equal(gate.bias, torch.full_like(gate.bias, 10.0))
