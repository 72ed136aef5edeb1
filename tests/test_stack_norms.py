"""RMSNorm, ScaleNorm and SimpleRMSNorm against float64 formulas; how the stack picks them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer import Decoder, Encoder
from anyformer.nn.norms import LayerNorm, RMSNorm, ScaleNorm, SimpleRMSNorm


@settings(max_examples=25, deadline=None)
@given(dim=st.integers(1, 24), seed=st.integers(0, 10_000), scale=st.floats(1e-2, 1e2))
def test_rmsnorm_rows_have_unit_rms_times_the_gain(dim: int, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, dim, generator=gen, dtype=torch.float64) * scale
    norm = RMSNorm(dim, eps=1e-12).double()
    gain = torch.rand(dim, generator=gen, dtype=torch.float64) + 0.5
    with torch.no_grad():
        norm.weight.copy_(gain)
    y = norm(x)
    rms = (y / gain).square().mean(-1).sqrt()
    # unit rms, but for eps: a row whose mean square is near eps (dim 1, a small draw) gets less
    mean_square = x.square().mean(-1)
    unit = (mean_square / (mean_square + 1e-12)).sqrt()
    torch.testing.assert_close(rms, unit, atol=1e-9, rtol=0)
    expected = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-12) * gain
    torch.testing.assert_close(y, expected)


def test_rmsnorm_eps_is_added_to_the_mean_square() -> None:
    x = torch.full((1, 4), 0.1, dtype=torch.float64)  # mean square 0.01
    y = RMSNorm(4, eps=0.03).double()(x)
    torch.testing.assert_close(y, torch.full_like(x, 0.1 / 0.2))  # 0.1 / sqrt(0.04)


def test_scalenorm_has_one_scalar_gain_and_unit_rms() -> None:
    norm = ScaleNorm(6).double()
    assert [p.shape for p in norm.parameters()] == [torch.Size([1])]
    with torch.no_grad():
        norm.weight.fill_(3.0)
    x = torch.randn(2, 6, dtype=torch.float64) * 7
    y = norm(x)
    # Transformers without Tears: g * x / ||x|| with g = 3 * sqrt(6)
    expected = 3.0 * 6**0.5 * x / x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(y, expected)


def test_simple_rmsnorm_has_no_parameters() -> None:
    norm = SimpleRMSNorm(5)
    assert list(norm.parameters()) == []
    x = torch.randn(4, 5, dtype=torch.float64) * 3
    torch.testing.assert_close(norm(x).square().mean(-1), torch.ones(4, dtype=torch.float64))


def test_rmsnorm_computes_half_precision_in_float32() -> None:
    x = torch.randn(2, 8) * 300  # squares overflow float16 (max 65504)
    y = RMSNorm(8).half()(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), RMSNorm(8)(x), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize(
    ("keyword", "cls"),
    [("use_rmsnorm", RMSNorm), ("use_scalenorm", ScaleNorm), ("use_simple_rmsnorm", SimpleRMSNorm)],
)
def test_the_stack_uses_the_chosen_norm_everywhere(keyword: str, cls: type) -> None:
    stack = Decoder(dim=8, depth=2, heads=2, **{keyword: True}, norm_eps=1e-3)
    norms = [b.pre_norm for b in stack.layers] + [stack.final_norm]
    assert all(type(n) is cls and n.eps == 1e-3 for n in norms)
    assert stack.config.norm.kind == keyword[4:]  # derived from the keyword, not stored
    assert "kind" not in stack.config_dict()["norm"]


def test_post_norm_blocks_put_the_norm_after_the_residual() -> None:
    stack = Encoder(dim=8, depth=1, heads=2, use_rmsnorm=True, pre_norm=False)
    assert all(type(b.post_norm) is RMSNorm for b in stack.layers)
    assert type(stack.final_norm) is torch.nn.Identity


def test_default_eps_per_kind() -> None:
    assert Decoder(dim=8, depth=1).final_norm.eps == 1e-5
    assert Decoder(dim=8, depth=1, use_rmsnorm=True).final_norm.eps == 1e-12
    assert isinstance(Decoder(dim=8, depth=1).final_norm, LayerNorm)


def test_norm_choices_that_cannot_combine_raise() -> None:
    with pytest.raises(ValueError, match="use_scalenorm=True and use_rmsnorm=True each choose"):
        Decoder(dim=8, depth=1, use_scalenorm=True, use_rmsnorm=True)
    with pytest.raises(ValueError, match="norm_bias=True is a LayerNorm option"):
        Decoder(dim=8, depth=1, use_rmsnorm=True, norm_bias=True)
    with pytest.raises(ValueError, match="norm_eps must be > 0"):
        Decoder(dim=8, depth=1, use_rmsnorm=True, norm_eps=-1.0)
