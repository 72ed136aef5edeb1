"""The additive-bias slot of AttentionMask, on both kernel paths, against float64 by hand."""

from __future__ import annotations

import pytest
import torch

from anyformer.nn.attend import Attend
from anyformer.nn.masks import build_attention_mask


def _reference(q, k, v, bias, keep):
    """softmax(q k^T / sqrt(d) + bias, masked) v in float64; rows with no key give zeros."""
    q, k, v, bias = (t.double() for t in (q, k, v, bias))
    sim = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias
    sim = sim.masked_fill(~keep, float("-inf"))
    attn = torch.softmax(sim, dim=-1).nan_to_num(0.0)
    return attn @ v


@pytest.mark.parametrize("flash", [False, True])
@pytest.mark.parametrize("case", ["none", "causal", "key_mask", "causal_key_mask", "dead_row"])
def test_bias_on_both_paths_equals_float64(flash, case):
    torch.manual_seed(0)
    b, h, i, d = 2, 3, 5, 8
    q, k, v = (torch.randn(b, h, i, d) for _ in range(3))
    bias = torch.randn(1, h, i, i)  # broadcast over the batch, as ALiBi / T5 biases are
    key_mask = None
    keep = torch.ones(b, 1, i, i, dtype=torch.bool)
    causal = case.startswith("causal")
    if causal:
        keep = keep & torch.ones(i, i, dtype=torch.bool).tril()
    if "key_mask" in case or case == "dead_row":
        key_mask = torch.ones(b, i, dtype=torch.bool)
        key_mask[1, :3] = False
        if case == "dead_row":
            causal = True  # row 0..2 of batch 1 see no key at all
            keep = keep & torch.ones(i, i, dtype=torch.bool).tril()
        keep = keep & key_mask[:, None, None, :]
    plan = build_attention_mask(q_len=i, k_len=i, causal=causal, key_mask=key_mask).with_bias(bias)
    out, _ = Attend(flash=flash)(q, k, v, plan)
    expected = _reference(q, k, v, bias, keep)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    if case == "dead_row":
        assert torch.count_nonzero(out[1, :, :3]) == 0


def test_biases_add_up():
    plan = build_attention_mask(q_len=2, k_len=2, causal=False)
    a, c = torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2)
    assert torch.equal(plan.with_bias(a).with_bias(c).bias, a + c)
    assert plan.with_bias(None) is plan


def test_causal_without_bias_stays_implicit():
    # no mask materialised when is_causal will do (decoding the full square)
    plan = build_attention_mask(q_len=4, k_len=4, causal=True)
    assert plan.is_causal and plan.mask is None
    assert plan.sdpa_args(4, 4, torch.float32, torch.device("cpu")) == (None, True)
