"""Additive position biases against their papers: ALiBi slopes, T5 buckets (a float64
reimplementation of the published formula), the dynamic MLP bias (a hand-run MLP); all three on
the fused attention path equal the explicit path."""

from __future__ import annotations

import math

import pytest
import torch

from anyformer import Decoder, Encoder, TransformerWrapper
from anyformer.nn.positions import AlibiPositionalBias, DynamicPositionBias, alibi_slopes, t5_bucket


def test_alibi_slopes_for_8_heads_are_the_papers_geometric_sequence():
    # Press et al. 2021, section 3: for 8 heads, 1/2, 1/4, ..., 1/256
    assert alibi_slopes(8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]


def test_alibi_slopes_for_12_heads_interleave_the_16_head_sequence():
    # not a power of two: the 8-head slopes, then every other slope of the 16-head sequence
    sixteen = [2 ** (-0.5 * h) for h in range(1, 17)]
    expected = [2.0**-h for h in range(1, 9)] + sixteen[0::2][:4]
    assert alibi_slopes(12) == pytest.approx(expected, rel=1e-15)
    assert expected[8:] == pytest.approx([2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5], rel=1e-15)


def test_alibi_bias_is_minus_slope_times_distance_and_zero_on_unbiased_heads():
    module = AlibiPositionalBias(2, total_heads=3)
    q_pos, k_pos = torch.tensor([[4, 6]]), torch.tensor([[0, 3, 4, 9]])
    bias = module(q_pos, k_pos)
    assert bias.shape == (1, 3, 2, 4)
    distances = torch.tensor([[4.0, 1, 0, 5], [6, 3, 2, 3]])
    torch.testing.assert_close(bias[0, 0], -distances * 2**-4, atol=0, rtol=0)  # 2 heads: 1/16
    torch.testing.assert_close(bias[0, 1], -distances * 2**-8, atol=0, rtol=0)
    assert torch.equal(bias[0, 2], torch.zeros(2, 4))


def _t5_bucket_float64(n: int, causal: bool, num_buckets: int, max_distance: int) -> int:
    """Raffel et al. (2020) relative_position_bucket, n = query position - key position."""
    ret = 0
    if not causal:
        num_buckets //= 2
        if n < 0:
            ret += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(large, num_buckets - 1)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 40)])
def test_t5_buckets_equal_the_published_formula(causal, num_buckets, max_distance):
    distances = [*range(-300, 301), 1000, -1000, 5000]
    got = t5_bucket(
        torch.tensor(distances), causal=causal, num_buckets=num_buckets, max_distance=max_distance
    )
    expected = [_t5_bucket_float64(d, causal, num_buckets, max_distance) for d in distances]
    assert got.tolist() == expected


def test_t5_bias_reads_its_table_by_bucket_and_scales_by_sqrt_dim_head():
    stack = Encoder(dim=16, depth=1, heads=2, attn_dim_head=4, rel_pos_bias=True,
                    rel_pos_num_buckets=8, rel_pos_max_distance=16)  # fmt: skip
    module = stack.attn_bias
    table = module.relative_attention_bias.weight  # (buckets, heads)
    q_pos, k_pos = torch.tensor([[2]]), torch.tensor([[0, 2, 5]])
    bias = module(q_pos, k_pos)
    buckets = [_t5_bucket_float64(d, False, 8, 16) for d in (2, 0, -3)]
    expected = table[buckets].T * 4**0.5  # (heads, j)
    torch.testing.assert_close(bias[0, :, 0], expected, atol=1e-6, rtol=0)


def test_dynamic_bias_is_its_mlp_run_on_each_distance():
    torch.manual_seed(0)
    module = DynamicPositionBias(4, heads=3, depth=2, log_distance=True, norm=True).double()
    q_pos, k_pos = torch.tensor([[3, 5]]), torch.tensor([[0, 1, 5]])
    bias = module(q_pos, k_pos)
    assert bias.shape == (1, 3, 2, 3)

    def mlp(d: float) -> torch.Tensor:
        x = torch.tensor([[math.copysign(math.log(abs(d) + 1), d)]], dtype=torch.double)
        for layer in module.mlp[:-1]:
            linear, norm = layer[0], layer[1]
            h = x @ linear.weight.T + linear.bias
            h = (h - h.mean()) / torch.sqrt(h.var(unbiased=False) + 1e-5) * norm.weight
            if norm.bias is not None:
                h = h + norm.bias
            x = h * torch.sigmoid(h)
        return (x @ module.mlp[-1].weight.T + module.mlp[-1].bias)[0]

    for i, q in enumerate((3, 5)):
        for j, k in enumerate((0, 1, 5)):
            torch.testing.assert_close(bias[0, :, i, j], mlp(q - k), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "keywords",
    [dict(alibi_pos_bias=True), dict(rel_pos_bias=True), dict(dynamic_pos_bias=True)],
    ids=["alibi", "t5", "dynamic"],
)
@pytest.mark.parametrize("stack_class", [Decoder, Encoder])
def test_biases_run_on_the_fused_path_and_equal_the_explicit_path(keywords, stack_class):
    logits = {}
    for flash in (False, True):
        torch.manual_seed(0)
        kernel = dict(attn_flash=True) if flash else dict(attn_kernel="explicit")
        stack = stack_class(dim=16, depth=2, heads=2, attn_dim_head=8, **kernel, **keywords)
        model = TransformerWrapper(num_tokens=32, max_seq_len=0, attn_layers=stack).eval()
        paths = {block.branch.path for block in stack.layers if block.layer_type == "a"}
        assert paths == {"fused" if flash else "explicit"}
        x = torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(2, 10, dtype=torch.bool)
        mask[1, 7:] = False
        with torch.no_grad():
            logits[flash] = model(x, mask=mask)
    torch.testing.assert_close(logits[True], logits[False], atol=1e-5, rtol=0)


def test_alibi_under_grouped_query_attention_pairs_slopes_as_x_transformers():
    # our query head o reads kv head o // 2, x-transformers' head t reads kv head t % 2: the
    # heads that share kv head 0 are our {0, 1} and its {0, 2}, so they carry slopes 1/4, 1/64
    module = AlibiPositionalBias(4, total_heads=4, kv_heads=2)
    assert module.slopes.tolist() == [1 / 4, 1 / 64, 1 / 16, 1 / 256]
