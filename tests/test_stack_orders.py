"""Layer orders (macaron, sandwich, PAR, custom, weight tying, execution orders), stochastic
depth and context-token dropout."""

from __future__ import annotations

import math

import pytest
import torch

from anyformer import Decoder, Encoder, KVCache, TransformerWrapper
from anyformer.nn.scale import Scale
from anyformer.nn.token_dropout import drop_tokens


def _types(stack) -> str:
    return "".join(stack.layer_types)


def test_macaron_blocks_are_ff_attn_ff_with_half_step_feedforwards() -> None:
    torch.manual_seed(0)
    stack = Decoder(dim=8, depth=2, heads=2, macaron=True).eval()
    assert _types(stack) == "faf" * 2
    seen = []
    for block in stack.layers:
        if block.layer_type == "f":
            assert isinstance(block.branch, Scale)
            block.branch.register_forward_hook(lambda m, a, out: seen.append((m.fn(a[0]), out)))
    stack(torch.randn(2, 5, 8))
    assert len(seen) == 4
    for full, half in seen:
        torch.testing.assert_close(half, 0.5 * full)


def test_sandwich_coef_gives_the_sandwich_transformer_order() -> None:
    # Press et al. 2020: s^k (sf)^(n-k) f^k with n = depth, k = sandwich_coef
    assert _types(Decoder(dim=8, depth=4, sandwich_coef=2)) == "aa" + "af" * 2 + "ff"
    assert _types(Decoder(dim=8, depth=3, sandwich_coef=3)) == "aaafff"


def test_par_ratio_puts_fewer_attention_layers_in_the_first_two_thirds() -> None:
    # PAR (Mandava et al. 2020): 12 layers with ratio 4 -> 3 attention layers, all in the
    # first 2/3 of the stack, each followed by feedforwards
    types = _types(Decoder(dim=8, depth=6, par_ratio=4))
    assert types == "aff" * 3 + "fff"
    assert types.count("a") == 12 // 4 and "a" not in types[8:]


def test_custom_layers_are_built_as_given() -> None:
    stack = Decoder(dim=8, depth=9, heads=2, custom_layers=["a", "f", "f", "a"])
    assert _types(stack) == "affa" and stack.config.custom_layers == ("a", "f", "f", "a")


def test_weight_tied_layers_have_one_blocks_parameters_and_run_depth_times() -> None:
    torch.manual_seed(0)
    tied = Decoder(dim=8, depth=4, heads=2, weight_tie_layers=True).eval()
    one = Decoder(dim=8, depth=1, heads=2)
    count = sum(p.numel() for p in tied.parameters())
    assert count == sum(p.numel() for p in one.parameters())
    assert len(tied.layers) == 2 and len(tied.execution_plan) == 8
    x = torch.randn(2, 5, 8)
    h = x
    for _ in range(4):  # pre-LN blocks written out, the same two blocks every time
        for block in tied.layers:
            h = h + block.branch(block.pre_norm(h))
    torch.testing.assert_close(tied(x), tied.final_norm(h))


def test_layers_execute_order_runs_blocks_in_that_order_and_caches_correctly() -> None:
    torch.manual_seed(0)
    order = (2, 3, 0, 1, 2, 3, 0)
    model = TransformerWrapper(
        num_tokens=16,
        max_seq_len=0,
        attn_layers=Decoder(dim=8, depth=2, heads=2, layers_execute_order=order),
    ).eval()
    ran = []
    for i, block in enumerate(model.attn_layers.layers):
        block.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    x = torch.randint(0, 16, (2, 9))
    full = model(x)
    assert tuple(ran) == order
    cache = KVCache()
    steps = [model(x[:, :4], cache=cache, input_not_include_cache=True)]
    for t in range(4, 9):
        steps.append(model(x[:, t : t + 1], cache=cache, input_not_include_cache=True))
    assert len(cache.layers) == 4  # one slot per attention execution: 2, 0, 2, 0
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_layer_dropout_skips_whole_layers_in_training_and_none_in_eval() -> None:
    torch.manual_seed(0)
    stack = Encoder(dim=8, depth=2, heads=2, layer_dropout=(0.0, 0.6, 0.0, 0.6), attn_dropout=0.0)
    ran = []
    for i, block in enumerate(stack.layers):
        block.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    x = torch.randn(2, 5, 8)
    runs = []
    for _ in range(60):
        ran.clear()
        out = stack.train()(x)
        runs.append(tuple(ran))
        h = x  # only the layers that ran, written out (eval: no dropout inside them)
        for i in ran:
            block = stack.layers[i]
            h = h + block.branch(block.pre_norm(h))
        torch.testing.assert_close(out, stack.final_norm(h))
    kept_ff = sum(r.count(1) + r.count(3) for r in runs) / 120
    assert all(0 in r and 2 in r for r in runs)  # probability 0: always run
    assert abs(kept_ff - 0.4) < 0.15  # each feedforward kept with probability 0.4
    ran.clear()
    stack.eval()(x)
    assert ran == [0, 1, 2, 3]


def test_cross_attn_tokens_dropout_keeps_a_fraction_of_the_context_in_training() -> None:
    torch.manual_seed(0)
    stack = Decoder(dim=8, depth=2, heads=2, cross_attend=True, cross_attn_tokens_dropout=0.5)
    widths = []
    for block in stack.layers:
        if block.layer_type == "c":
            block.branch.qkv.register_forward_hook(lambda m, a, o: widths.append(a[1].shape[1]))
    x, context = torch.randn(2, 3, 8), torch.randn(2, 9, 8)
    stack.train()(x, context=context)
    stack.eval()(x, context=context)
    assert widths == [4, 4, 9, 9]  # int(0.5 * 9) once per forward, shared by both layers


def test_drop_tokens_keeps_order_and_respects_the_mask() -> None:
    seq = torch.arange(10.0).view(1, 10, 1).repeat(3, 1, 1)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    kept, new_mask = drop_tokens(seq, mask, 0.3, torch.Generator().manual_seed(1))
    assert kept.shape == (3, 7, 1)
    values = kept[..., 0]
    assert bool((values[:, 1:] > values[:, :-1]).all())  # original order
    # row 1 has 6 kept tokens: ceil(6 * 0.7) = 5 of them stay kept, all from its first 6
    assert int(new_mask[1].sum()) == math.ceil(6 * 0.7)
    assert bool((values[1][new_mask[1]] < 6).all())
    assert bool(new_mask[0].all()) and bool(new_mask[2].all())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(weight_tie_layers=True, custom_layers=("a", "f")),
            "weight_tie_layers and custom_layers",
        ),
        (
            dict(weight_tie_layers=True, layers_execute_order=(0, 1)),
            "weight_tie_layers and layers_execute_order",
        ),
        (dict(par_ratio=2, sandwich_coef=1), "par_ratio and sandwich_coef"),
        (dict(custom_layers=("a", "x")), "custom_layers must be a non-empty sequence"),
        (dict(custom_layers=("a", "c", "f")), "needs cross_attend=True"),
        (dict(sandwich_coef=5), r"sandwich_coef must be in \[1, depth=2\]"),
        (dict(par_ratio=9), r"par_ratio must be in \(1, 4\]"),
        (dict(layers_execute_order=(0, 4)), r"layer indices in \[0, 4\)"),
        (dict(layer_dropout=(0.1, 0.2)), "one value per layer"),
        (dict(layer_dropout=1.0), r"layer_dropout values must be \[0.0, 1.0\)"),
        (dict(shift_tokens=(1, 2, 3)), "shift_tokens as a tuple needs one value per layer"),
        (dict(cross_attn_tokens_dropout=1.5), r"cross_attn_tokens_dropout must be in \[0, 1\)"),
        (dict(shift_tokens=8), "splits each input into 9 channel groups, more than dim=8"),
    ],
)
def test_refused_layer_orders_name_the_keywords(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Decoder(dim=8, depth=2, heads=2, **kwargs)


def test_layer_dropout_refuses_a_cache_in_training() -> None:
    stack = Decoder(dim=8, depth=1, heads=2, layer_dropout=0.5).train()
    with pytest.raises(ValueError, match="layer_dropout skips layers while training"):
        stack(torch.randn(1, 3, 8), cache=KVCache())


def test_cache_age_computes_only_the_last_rows_of_the_whole_sequence() -> None:
    torch.manual_seed(0)
    stack = Decoder(dim=8, depth=2, heads=2, shift_tokens=1).eval()
    h = torch.randn(2, 6, 8)
    full = stack(h)
    _, inter = stack(h[:, :4], return_hiddens=True)  # x-transformers' convention: the cache
    out = stack(h[:, :5], cache=inter, cache_age=1)  # ... then the whole sequence each call
    out2 = stack(h, cache=inter, cache_age=1)
    torch.testing.assert_close(torch.cat((out, out2), dim=1), full[:, 4:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cache_age needs a cache"):
        stack(h, cache_age=1)
    with pytest.raises(ValueError, match=r"cache_age must be an int in \[1, 6\]"):
        stack(h, cache=KVCache(), cache_age=7)
