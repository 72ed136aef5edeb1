"""Batched generation: prompts of different lengths, rows that finish (eos) leave the batch.

Every row must equal what greedy decoding of its prompt alone gives (by full recomputation,
straight from the model's logits), with eos at a different step in each row, while the model
computes fewer rows once rows are done.
"""

from __future__ import annotations

import pytest
import torch
from gen_models import decoder_net, greedy_by_hand, prompt_list
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyformer import AutoregressiveWrapper
from anyformer.generation.batched import DROP_EVERY
from anyformer.generation.session import _PACK_FROM_STEPS
from anyformer.stack import lean

PAD = 0


def _expected(refs: list[torch.Tensor], eos: int) -> torch.Tensor:
    """From each row's eos-free greedy tokens: the row cut after its first eos, padded; the
    columns after the last eos cut when every row emitted eos."""
    out = torch.stack(refs).clone()
    firsts = []
    for i, row in enumerate(out.tolist()):
        if eos in row:
            f = row.index(eos)
            out[i, f + 1 :] = PAD
            firsts.append(f)
    return out[:, : max(firsts) + 1] if len(firsts) == len(refs) else out


def _first_eos_steps(refs: list[torch.Tensor], eos: int) -> list[int]:
    return [row.tolist().index(eos) for row in refs if eos in row.tolist()]


def _pick_eos(refs: list[torch.Tensor], vocab: int) -> int:
    """The non-pad token whose first occurrences are spread over the most distinct steps."""
    return max(range(1, vocab), key=lambda t: len(set(_first_eos_steps(refs, t))))


def _rows_seen(net: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    rows: list[int] = []
    handle = net.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    return rows, handle


@pytest.mark.parametrize("cache_kv", [True, False])
def test_batch_of_eight_with_eos_equals_each_row_alone_and_drops_finished_rows(cache_kv):
    net = decoder_net(seed=3, logit_scale=3.0)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    lens = (1, 9, 4, 17, 6, 12, 2, 20)
    prompts = prompt_list(lens, seed=4)
    steps = 40
    refs = [greedy_by_hand(net, p, steps) for p in prompts]
    eos = _pick_eos(refs, 32)
    firsts = _first_eos_steps(refs, eos)
    assert len(set(firsts)) >= 3 and min(firsts) < steps - DROP_EVERY  # premise: staggered eos
    rows, handle = _rows_seen(net)
    try:
        out = wrapper.generate(prompts, steps, eos_token=eos, temperature=0, cache_kv=cache_kv)
    finally:
        handle.remove()
    assert torch.equal(out, _expected(refs, eos))
    # call 0 runs the prompts; call k feeds step k-1's token. After step t with
    # t % DROP_EVERY == DROP_EVERY - 1 the rows done by then (first eos <= t) leave the batch
    first_of = [r.tolist().index(eos) if eos in r.tolist() else steps for r in refs]
    expected_rows = [8]
    for k in range(1, len(rows)):
        last_check = (k // DROP_EVERY) * DROP_EVERY - 1
        expected_rows.append(8 if last_check < 0 else sum(f > last_check for f in first_of))
    assert rows == expected_rows
    assert sum(rows) < 8 * len(rows)  # premise: some row was dropped


def test_right_padded_tensor_with_prompt_lens_equals_list():
    net = decoder_net(seed=5, logit_scale=3.0)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    prompts = prompt_list((3, 11, 7, 1, 5, 8, 2, 10), seed=6)
    refs = [greedy_by_hand(net, p, 30) for p in prompts]
    eos = _pick_eos(refs, 32)
    padded = torch.full((8, 11), 7, dtype=torch.long)  # any pad token: it is masked
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = p
    lens = torch.tensor([len(p) for p in prompts])
    out = wrapper.generate(padded, 30, eos_token=eos, temperature=0, prompt_lens=lens)
    assert torch.equal(out, _expected(refs, eos))


def test_stream_drops_rows_and_yields_the_tokens_of_generate():
    net = decoder_net(seed=3, logit_scale=3.0)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    prompts = prompt_list((1, 9, 4, 17, 6, 12, 2, 20), seed=4)
    refs = [greedy_by_hand(net, p, 40) for p in prompts]
    eos = _pick_eos(refs, 32)
    rows, handle = _rows_seen(net)
    try:
        streamed = torch.stack(list(wrapper.stream(prompts, 40, eos_token=eos, temperature=0)), 1)
    finally:
        handle.remove()
    assert torch.equal(streamed, _expected(refs, eos))
    assert min(rows) < 8


def test_sampled_rows_equal_the_path_that_keeps_every_row():
    """Dropping rows must not change which random numbers each row's sample uses."""
    net = decoder_net(seed=3, logit_scale=3.0)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    prompts = prompt_list((1, 9, 4, 17, 6, 12, 2, 20), seed=4)
    refs = [greedy_by_hand(net, p, 40) for p in prompts]
    eos = _pick_eos(refs, 32)

    def run(**kw):
        g = torch.Generator().manual_seed(11)
        return wrapper.generate(prompts, 40, eos_token=eos, temperature=0.7, generator=g, **kw)

    rows, handle = _rows_seen(net)
    try:
        dropped = run()
    finally:
        handle.remove()
    kept, _ = run(return_intermediates=True)  # the returned cache keeps every row
    assert min(rows) < 8  # premise: rows were dropped on the sampled path too
    assert torch.equal(dropped, kept)


def test_cross_attention_context_follows_the_remaining_rows():
    net = decoder_net(seed=8, logit_scale=3.0, cross_attend=True)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    prompts = prompt_list((6, 1, 3, 9, 2, 5), seed=9)
    context = torch.randn(6, 5, 32, generator=torch.Generator().manual_seed(10))
    refs = [greedy_by_hand(net, p, 32, context=context[i : i + 1]) for i, p in enumerate(prompts)]
    eos = _pick_eos(refs, 32)
    assert min(_first_eos_steps(refs, eos)) < 32 - DROP_EVERY  # premise: a row drops early
    out = wrapper.generate(prompts, 32, eos_token=eos, temperature=0, context=context)
    assert torch.equal(out, _expected(refs, eos))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lens=st.lists(st.integers(1, 14), min_size=2, max_size=9),
    seed=st.integers(0, 2**16),
    cache_kv=st.booleans(),
)
def test_any_batch_with_eos_equals_each_row_alone(lens, seed, cache_kv):
    net = decoder_net(seed=seed % 7, logit_scale=3.0)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    prompts = prompt_list(lens, seed=seed)
    refs = [greedy_by_hand(net, p, 24) for p in prompts]
    eos = _pick_eos(refs, 32)
    out = wrapper.generate(prompts, 24, eos_token=eos, temperature=0, cache_kv=cache_kv)
    assert torch.equal(out, _expected(refs, eos))


# --------------------------------------------------------------------------------------
# the session's decoding loop for several rows: weight copies in oneDNN's packed layout,
# activations without their module calls (stack/lean.py)

LLAMA = dict(rotary_pos_emb=True, use_rmsnorm=True, ff_glu=True, ff_swish=True, attn_kv_heads=1)


def _session_loops(monkeypatch: pytest.MonkeyPatch) -> list[lean.LeanLoop]:
    """Record the loop every generation session attaches."""
    loops: list[lean.LeanLoop] = []

    def recording(stack, cache, **kwargs):
        attached = lean.attach(stack, cache, **kwargs)
        if attached:
            loops.append(lean.loop_for(stack, cache))
        return attached

    monkeypatch.setattr("anyformer.generation.session.attach", recording)
    return loops


def _snapshot(model: torch.nn.Module) -> dict[str, tuple]:
    return {
        k: (v.clone(), v.dtype, v.stride(), v.data_ptr(), v.device)
        for k, v in model.state_dict().items()
    }


def _maps(loop: lean.LeanLoop) -> list:
    return [m for s in loop.steps for m in s.maps if m is not None]


@pytest.mark.parametrize("options", [{}, LLAMA], ids=["gelu-layernorm", "llama"])
def test_a_batch_decodes_from_packed_copies_row_for_row_as_alone(monkeypatch, options):
    """Eight rows of different lengths, long enough for the copies: the loop multiplies by
    packed copies (the model untouched), and every row is its prompt's greedy decoding by
    full recomputation; eos drops rows (fewer rows than the copies were packed for)."""
    net = decoder_net(seed=11, logit_scale=3.0, **options)
    before = _snapshot(net)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    steps = max(40, _PACK_FROM_STEPS)
    prompts = prompt_list((1, 9, 4, 17, 6, 12, 2, 20), seed=12)
    refs = [greedy_by_hand(net, p, steps) for p in prompts]
    eos = _pick_eos(refs, 32)
    assert min(_first_eos_steps(refs, eos)) < steps - DROP_EVERY  # premise: rows are dropped
    loops = _session_loops(monkeypatch)
    plain = wrapper.generate(prompts, steps, temperature=0)
    dropped = wrapper.generate(prompts, steps, eos_token=eos, temperature=0)
    assert len(loops) == 2
    if torch.backends.mkldnn.is_available():
        assert all(type(m) is lean._Packed for loop in loops for m in _maps(loop))
    assert torch.equal(plain, torch.stack(refs))
    assert torch.equal(dropped, _expected(refs, eos))
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k, (value, dtype, stride, ptr, device) in before.items():
        v = after[k]
        assert (v.dtype, v.stride(), v.data_ptr(), v.device) == (dtype, stride, ptr, device)
        assert torch.equal(v, value)


def test_batched_rows_equal_unbatched_decoding_and_the_blocks(monkeypatch):
    """The batch through the packed loop, each prompt alone (one row: column-major copies),
    and the batch through the model's blocks (no loop) give the same greedy tokens."""
    net = decoder_net(seed=13, logit_scale=3.0, **LLAMA)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    prompts = prompt_list((5, 1, 13, 8, 3, 10), seed=14)
    steps = 70  # one row alone decodes from copies too (>= 64 steps)
    batched = wrapper.generate(prompts, steps, temperature=0)
    alone = torch.stack([wrapper.generate(p, steps, temperature=0) for p in prompts])
    monkeypatch.setattr("anyformer.generation.session.attach", lambda *a, **k: False)
    blocks = wrapper.generate(prompts, steps, temperature=0)
    assert torch.equal(batched, alone)
    assert torch.equal(batched, blocks)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lens=st.lists(st.integers(1, 12), min_size=3, max_size=9),
    seed=st.integers(0, 2**16),
    ff=st.sampled_from(
        [{}, {"ff_glu": True}, {"ff_glu": True, "ff_swish": True}, {"ff_relu_squared": True}]
    ),
    rmsnorm=st.booleans(),
)
def test_any_packed_batch_equals_each_row_alone(lens, seed, ff, rmsnorm):
    net = decoder_net(seed=seed % 5, logit_scale=3.0, use_rmsnorm=rmsnorm, **ff)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    prompts = prompt_list(lens, seed=seed)
    steps = _PACK_FROM_STEPS
    refs = torch.stack([greedy_by_hand(net, p, steps) for p in prompts])
    assert torch.equal(wrapper.generate(prompts, steps, temperature=0), refs)


@pytest.mark.parametrize(
    "ff",
    [
        {},
        {"ff_glu": True},
        {"ff_glu": True, "ff_swish": True},
        {"ff_relu_squared": True},
        {"ff_glu": True, "ff_glu_mult_bias": True},
        {"ff_post_act_ln": True, "ff_swish": True},
        {"ff_gelu_tanh": True},
    ],
    ids=str,
)
def test_the_loops_activation_is_the_modules_bit_for_bit(ff):
    net = decoder_net(seed=15, **ff)
    block = next(b for b in net.attn_layers.layers if b.layer_type == "f")
    h = torch.randn(
        5, block.branch.proj_in.out_features, generator=torch.Generator().manual_seed(0)
    )
    act, bypassed = lean._activation(block.branch)
    with torch.no_grad():
        assert torch.equal(act(h), block.branch.post_act_norm(block.branch.act(h)))
    plain_types = (torch.nn.SiLU, torch.nn.GELU, torch.nn.ReLU)
    glu = type(block.branch.act).__name__ == "GLU"
    known = (glu and block.branch.act.mult_bias is None) or isinstance(
        block.branch.act, plain_types
    )
    assert bool(bypassed) == (known and "ff_post_act_ln" not in ff)


def test_a_hook_on_a_bypassed_activation_runs_the_blocks(monkeypatch):
    net = decoder_net(seed=16, logit_scale=3.0, **LLAMA)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    prompts = prompt_list((4, 7, 2), seed=17)
    calls = []
    run = lean.LeanLoop.__call__
    monkeypatch.setattr(lean.LeanLoop, "__call__", lambda s, x, r: calls.append(1) or run(s, x, r))
    expected = wrapper.generate(prompts, 20, temperature=0)
    assert len(calls) == 20  # premise: the loop ran every call
    seen = []
    silu = net.attn_layers.layers[1].branch.act.act
    handle = silu.register_forward_hook(lambda *a: seen.append(1))
    try:
        got = wrapper.generate(prompts, 20, temperature=0)
    finally:
        handle.remove()
    assert len(calls) == 20 and len(seen) == 20  # the blocks ran, the hook saw every call
    assert torch.equal(got, expected)


def test_cpu_autocast_runs_the_blocks_of_a_packed_session(monkeypatch):
    """oneDNN's packed products take no part in autocast: under it the blocks run (as they do
    without a loop), and a stream that enters autocast midway switches to them."""
    net = decoder_net(seed=18, logit_scale=3.0, **LLAMA)
    wrapper = AutoregressiveWrapper(net, pad_value=PAD)
    prompts = prompt_list((4, 7, 2, 9), seed=19)
    calls = []
    run = lean.LeanLoop.__call__
    monkeypatch.setattr(lean.LeanLoop, "__call__", lambda s, x, r: calls.append(1) or run(s, x, r))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = wrapper.generate(prompts, 20, temperature=0)
        assert calls == []
        stream = wrapper.stream(prompts, 20, temperature=0)
    streamed = [next(stream) for _ in range(10)]  # the loop, packed, in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        streamed += list(stream)  # the blocks, in bfloat16
    assert len(calls) == 10
    with monkeypatch.context() as m:
        m.setattr("anyformer.generation.session.attach", lambda *a, **k: False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            blocks = wrapper.generate(prompts, 20, temperature=0)
    assert torch.equal(got, blocks)
    fp32 = wrapper.generate(prompts, 20, temperature=0)
    assert torch.equal(torch.stack(streamed[:10], 1), fp32[:, :10])
    assert torch.stack(streamed, 1).shape == (4, 20)
