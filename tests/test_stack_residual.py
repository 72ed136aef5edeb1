"""Residual schemes: scaled residuals, the GRU gate (equations written out), sandwich norm,
ResiDual's two streams, zero-initialised branches; the combinations that are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anyformer import Decoder, Encoder
from anyformer.nn.residual import GRUGating, Residual


def test_residual_scales_the_stream_not_the_branch() -> None:
    res = Residual(4, scale_residual=True, constant=0.5).double()
    with torch.no_grad():
        res.residual_scale.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x, out = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(res(x, out), x * res.residual_scale * 0.5 + out)


def test_gru_gating_is_a_gru_cell_with_the_branch_as_input() -> None:
    torch.manual_seed(0)
    gate = GRUGating(3, scale_residual=True).double()
    with torch.no_grad():
        gate.residual_scale.uniform_(0.5, 1.5)
    x, out = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    h, i = x * gate.residual_scale, out  # state: the (scaled) stream; input: the branch output
    (w_ir, w_iz, w_in), (w_hr, w_hz, w_hn) = (
        gate.gru.weight_ih.chunk(3),
        gate.gru.weight_hh.chunk(3),
    )
    (b_ir, b_iz, b_in), (b_hr, b_hz, b_hn) = gate.gru.bias_ih.chunk(3), gate.gru.bias_hh.chunk(3)
    r = torch.sigmoid(i @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
    z = torch.sigmoid(i @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
    n = torch.tanh(i @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
    torch.testing.assert_close(gate(x, out), (1 - z) * n + z * h)


def test_stack_residual_modules_follow_the_keywords() -> None:
    gated = Decoder(dim=8, depth=1, heads=2, gate_residual=True, scale_residual=True)
    assert all(isinstance(b.residual, GRUGating) for b in gated.layers)
    assert all(b.residual.residual_scale.shape == (8,) for b in gated.layers)
    scaled = Decoder(dim=8, depth=1, heads=2, scale_residual_constant=0.25)
    assert all(
        b.residual.constant == 0.25 and b.residual.residual_scale is None for b in scaled.layers
    )


def test_sandwich_norm_normalises_the_branch_output() -> None:
    torch.manual_seed(0)
    stack = Decoder(dim=8, depth=1, heads=2, sandwich_norm=True).eval()
    x = torch.randn(2, 5, 8)
    h = x
    for block in stack.layers:  # x + norm(branch(norm(x))), written out
        h = h + block.post_branch_norm(block.branch(block.pre_norm(h)))
    torch.testing.assert_close(stack(x), stack.final_norm(h))
    with torch.no_grad():  # a zero gain on the sandwich norms: every branch adds nothing
        for block in stack.layers:
            block.post_branch_norm.weight.zero_()
    torch.testing.assert_close(stack(x), stack.final_norm(x))


def test_resi_dual_keeps_a_post_ln_stream_and_a_pre_ln_stream() -> None:
    torch.manual_seed(0)
    scale = 0.5
    stack = Decoder(dim=8, depth=2, heads=2, resi_dual=True, resi_dual_scale=scale).eval()
    assert all(isinstance(b.pre_norm, nn.Identity) for b in stack.layers)  # post-LN blocks
    x = torch.randn(2, 6, 8)
    post, dual = x, x * scale
    for block in stack.layers:
        out = block.branch(post)
        dual = dual + out * scale  # the un-normalised sum of every branch output
        post = block.post_norm(post + out)
    torch.testing.assert_close(stack(x), post + stack.final_norm(dual))


def test_zero_init_branch_output_makes_a_fresh_stack_an_identity_on_the_stream() -> None:
    torch.manual_seed(0)
    stack = Encoder(dim=8, depth=2, heads=2, zero_init_branch_output=True, cross_attend=True)
    outs = [b.branch.to_out.weight for b in stack.layers if b.layer_type != "f"]
    outs += [b.branch.proj_out.weight for b in stack.layers if b.layer_type == "f"]
    assert len(outs) == 6 and all(bool((w == 0).all()) for w in outs)
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(stack(x, context=torch.randn(2, 3, 8)), stack.final_norm(x))
    assert stack.config.attention.zero_init_output is False  # derived at build, not stored


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(gate_residual=True, scale_residual_constant=2.0),
            "gate_residual=True and scale_residual_constant",
        ),
        (dict(sandwich_norm=True, pre_norm=False), "sandwich_norm=True needs pre_norm=True"),
        (
            dict(sandwich_norm=True, resi_dual=True),
            "sandwich_norm and resi_dual cannot be combined",
        ),
        (
            dict(resi_dual=True, pre_norm_has_final_norm=False),
            "resi_dual=True needs its final norm",
        ),
        (dict(resi_dual=True, resi_dual_scale=0.0), r"resi_dual_scale must be in \(0, 1\]"),
        (dict(scale_residual_constant=0.0), "scale_residual_constant must be > 0"),
    ],
)
def test_refused_combinations_name_both_keywords(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Decoder(dim=8, depth=1, heads=2, **kwargs)
