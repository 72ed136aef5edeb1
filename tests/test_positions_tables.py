"""Position tables keep full precision and stay normal tensors: rotary frequencies and factors,
xPos rates, ALiBi slopes and sinusoidal frequencies are float32 under any module dtype (checked
against float64 evaluations of the published formulas at 4096 positions), and a table grown
during a ``torch.inference_mode()`` forward does not break a later training step."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from anyformer import Decoder, Encoder, TransformerWrapper
from anyformer.nn.positions import AlibiPositionalBias, ScaledSinusoidalEmbedding

N = 4096
ROT = 16  # rotary width (dim 64, 4 heads: dim_head 16, rotary over all of it)


def _rotary_model(**kw: object) -> TransformerWrapper:
    stack = Decoder(
        dim=64, depth=1, heads=4, attn_dim_head=ROT, rotary_pos_emb=True, rotary_emb_dim=ROT, **kw
    )
    return TransformerWrapper(num_tokens=32, max_seq_len=0, attn_layers=stack)


def _bf16_by_cast() -> TransformerWrapper:
    return _rotary_model().to(torch.bfloat16)


def _bf16_from_meta() -> TransformerWrapper:
    """The route of ``from_hf_dir(..., dtype=torch.bfloat16)``: meta build, cast, to_empty,
    reset."""
    with torch.device("meta"):
        model = _rotary_model()
    model = model.to(dtype=torch.bfloat16).to_empty(device="cpu")
    model.reset_parameters()
    return model


def _angles_float64(rot: int = ROT, theta: float = 10000.0) -> torch.Tensor:
    """(N, rot/2) angles p * theta^(-2i/rot), in float64."""
    inv_freq = torch.tensor([theta ** (-2 * i / rot) for i in range(rot // 2)], dtype=torch.double)
    return torch.arange(N, dtype=torch.double)[:, None] * inv_freq


def _rotate_float64(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (i, i + r/2) of t (N, r) by angles (N, r/2), in float64."""
    t, half = t.double(), angles.shape[-1]
    a, b = t[:, :half], t[:, half:]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((a * cos - b * sin, b * cos + a * sin), -1)


@pytest.mark.parametrize("build", [_bf16_by_cast, _bf16_from_meta], ids=["to", "meta"])
def test_bfloat16_model_rotates_4096_positions_with_float32_tables(build):
    """cos/sin off by bf16 rounding of the final value only (<= 2^-9 plus the float32 angle's
    error, 4096 * 2^-22), not by bf16 angles (0.75 off at position 4000 before)."""
    rotary = build().attn_layers.rotary
    assert rotary.inv_freq.dtype == rotary.cos_table.dtype == torch.float32
    positions = torch.arange(N)[None]
    rot = rotary.angles(positions, offset=0)  # the stack's path: a slice of the table
    cos, sin = rot.factors("q", torch.bfloat16)
    assert cos.dtype == torch.bfloat16 and cos.shape == (1, 1, N, ROT)
    angles = _angles_float64()
    half = ROT // 2
    bound = 2**-9 + N * 2**-22
    assert (cos[0, 0, :, :half].double() - angles.cos()).abs().max().item() <= bound
    assert (sin[0, 0, :, half:].double() - angles.sin()).abs().max().item() <= bound
    # the rotated queries and keys (bf16 in, bf16 out) against float64 rotations of the same
    torch.manual_seed(0)
    q = (torch.rand(1, 1, N, ROT) * 2 - 1).to(torch.bfloat16)
    for given in (rot, positions):  # the table, and per-row positions
        rq, rk = rotary(q, q, given)
        assert rq.dtype == torch.bfloat16
        expected = _rotate_float64(q[0, 0], angles)
        assert (rq[0, 0].double() - expected).abs().max().item() <= 0.01
        assert (rk[0, 0].double() - expected).abs().max().item() <= 0.01


def test_double_and_back_recompute_the_tables_in_that_precision():
    rotary = _rotary_model(rotary_xpos=True).attn_layers.rotary
    inv_freq = torch.tensor([10000 ** (-2 * i / ROT) for i in range(ROT // 2)], dtype=torch.double)
    zeta = [(2 * i + 0.4 * ROT) / (1.4 * ROT) for i in range(ROT // 2)]
    zeta = torch.tensor(zeta, dtype=torch.double)
    rotary.double()
    assert rotary.inv_freq.dtype == rotary.xpos_zeta.dtype == torch.float64
    torch.testing.assert_close(rotary.inv_freq, inv_freq, atol=0, rtol=1e-15)
    torch.testing.assert_close(rotary.xpos_zeta, zeta, atol=0, rtol=1e-15)
    rotary.half()
    assert rotary.inv_freq.dtype == rotary.xpos_zeta.dtype == rotary.sin_table.dtype
    assert rotary.inv_freq.dtype == torch.float32
    torch.testing.assert_close(rotary.inv_freq.double(), inv_freq, atol=0, rtol=2**-22)
    torch.testing.assert_close(rotary.xpos_zeta.double(), zeta, atol=0, rtol=2**-22)


def test_alibi_slopes_stay_float32_in_a_bfloat16_model():
    """12 heads: slopes 2^-0.5 ... are not bf16 numbers; nor is the distance 4001."""
    module = AlibiPositionalBias(12).to(torch.bfloat16)
    assert module.slopes.dtype == torch.float32
    bias = module(torch.tensor([[N + 1]]), torch.tensor([[0]]))
    assert bias.dtype == torch.float32
    assert bias[0, 8, 0, 0].item() == pytest.approx(-(N + 1) * 2**-0.5, rel=1e-6)


def test_sinusoidal_frequencies_stay_float32_and_the_output_follows_the_model():
    module = ScaledSinusoidalEmbedding(16).to(torch.bfloat16)
    assert module.inv_freq.dtype == torch.float32
    emb = module(torch.tensor([4000]))
    assert emb.dtype == torch.bfloat16
    inv_freq = [10000 ** (-i / 8) for i in range(8)]
    expected = [math.sin(4000 * f) for f in inv_freq] + [math.cos(4000 * f) for f in inv_freq]
    expected = torch.tensor(expected, dtype=torch.double) * 16**-0.5
    assert (emb[0].double() - expected).abs().max().item() <= 2**-8 * 0.25  # bf16 rounding


def test_bfloat16_encoder_with_sinusoidal_positions_keeps_a_bfloat16_residual():
    model = TransformerWrapper(
        num_tokens=32,
        max_seq_len=64,
        scaled_sinu_pos_emb=True,
        attn_layers=Encoder(dim=16, depth=1, heads=2),
    ).to(torch.bfloat16)
    assert model(torch.randint(0, 32, (1, 8))).dtype == torch.bfloat16


def test_training_after_a_long_inference_mode_forward():
    """2000 positions under inference mode grow the rotary table past its first 1024; a
    training step of 2000 positions then runs, with the gradients of a model that never saw
    inference mode."""
    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=32,
        max_seq_len=0,
        attn_layers=Decoder(dim=16, depth=1, heads=2, rotary_pos_emb=True, rotary_xpos=True),
    )
    fresh = copy.deepcopy(model)
    x = torch.randint(0, 32, (1, 2000))
    with torch.inference_mode():
        model(x)
    assert model.attn_layers.rotary.cos_table.shape[0] == 2048
    assert not model.attn_layers.rotary.cos_table.is_inference()
    grads = []
    for m in (model, fresh):
        m(x).float().square().mean().backward()
        grads.append([p.grad for p in m.parameters()])
    assert all(g.isfinite().all() for g in grads[0])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
