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
