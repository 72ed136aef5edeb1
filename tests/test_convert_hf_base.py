"""WeightLoader (anyformer.convert.hf_base): how checkpoint tensors land in anyformer modules."""

from __future__ import annotations

import pytest
import torch

from anyformer import Decoder, FeedForward, TransformerWrapper
from anyformer.convert.hf_base import UnsupportedHFModel, WeightLoader, tied_head


def _pairs(seed: int, rows: int, cols: int, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    return weight, (torch.randn(rows, generator=g) if bias else None)


def test_glu_projection_is_up_then_gate_with_their_biases():
    ff = FeedForward(4, mult=2, glu=True)  # hidden width 8: proj_in holds 16 rows
    up, gate, down = _pairs(0, 8, 4, True), _pairs(1, 8, 4, True), _pairs(2, 4, 8, True)
    loader = WeightLoader({}, ff, "ckpt")
    loader.set_feedforward(ff, up, down, "mlp", gate=gate)
    assert torch.equal(ff.proj_in.weight[:8], up[0]) and torch.equal(ff.proj_in.weight[8:], gate[0])
    assert torch.equal(ff.proj_in.bias[:8], up[1]) and torch.equal(ff.proj_in.bias[8:], gate[1])
    assert torch.equal(ff.proj_out.weight, down[0]) and torch.equal(ff.proj_out.bias, down[1])


@pytest.mark.parametrize("biased", ["gate", "up"])
def test_a_bias_on_only_one_of_up_and_gate_is_refused(biased):
    # was: a gate bias without an up bias was dropped without a word (an up bias without a gate
    # bias failed inside torch.cat)
    ff = FeedForward(4, mult=2, glu=True, no_bias=True)
    up, gate = _pairs(0, 8, 4, biased == "up"), _pairs(1, 8, 4, biased == "gate")
    loader = WeightLoader({}, ff, "ckpt")
    with pytest.raises(UnsupportedHFModel, match="a bias on one of the up and gate projections"):
        loader.set_feedforward(ff, up, _pairs(2, 4, 8, False), "mlp", gate=gate)


def test_tied_head_reads_the_wrapper_config_and_names_a_wrong_model():
    def model(tie: bool) -> TransformerWrapper:
        stack = Decoder(dim=8, depth=1, heads=2)
        return TransformerWrapper(
            num_tokens=16, max_seq_len=4, attn_layers=stack, tie_embedding=tie
        )

    assert tied_head(model(True)) is True and tied_head(model(False)) is False
    with pytest.raises(TypeError, match=r"expected a TransformerWrapper .* got Linear"):
        tied_head(torch.nn.Linear(2, 2))
