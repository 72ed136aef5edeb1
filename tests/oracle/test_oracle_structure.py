"""Oracle checks of the stack-structure rows that need more than test_oracle.py's generic ones:
the 1.28.2 token-shift cache defect, continuous generation, and Transformer-XL generation."""

from __future__ import annotations

import warnings

import pytest
import torch
import x_transformers as xt
from torch import Tensor, nn

import anyformer as af
from anyformer.convert import to_x_transformers_state_dict
from anyformer.generation import session

from .table import ROWS, Row
from .test_oracle import GENERATE_STEPS, Inputs, _generate, make_inputs, make_pair, max_diff

SHIFT_DEFECT = [pytest.param(r, id=r.id) for r in ROWS if r.defect == "shift_tokens_cache"]
CONTINUOUS = [pytest.param(r, id=r.id) for r in ROWS if r.kind == "continuous"]
XL = [pytest.param(r, id=r.id) for r in ROWS if r.kind == "xl"]
#: generated vectors are fed back: float rounding compounds over the 8 steps
CONTINUOUS_GENERATE_ATOL = 2e-4


@pytest.mark.parametrize("row", SHIFT_DEFECT)
def test_defect_shift_tokens_cache(row: Row) -> None:
    """1.28.2's cached greedy decoding with shift_tokens departs from its uncached one; ours,
    cached or not, equals its uncached one."""
    ours, theirs = make_pair(row)
    inp = make_inputs(row, ours)
    expected = _generate(xt, theirs, row, inp, cache_kv=False)
    assert torch.equal(_generate(af, ours, row, inp, cache_kv=False), expected)
    assert torch.equal(_generate(af, ours, row, inp, cache_kv=True), expected)
    assert not torch.equal(_generate(xt, theirs, row, inp, cache_kv=True), expected)


@pytest.mark.parametrize("row", CONTINUOUS)
def test_continuous_generation(row: Row) -> None:
    """ContinuousAutoregressiveWrapper.generate: ours (KV-cached and not) equals 1.28.2's."""
    ours, theirs = make_pair(row)
    inp = make_inputs(row, ours)
    prompt = inp.x[:, :5]
    with torch.no_grad():
        expected = xt.ContinuousAutoregressiveWrapper(theirs).generate(prompt, 8)
    wrapper = af.ContinuousAutoregressiveWrapper(ours)
    assert expected.shape == (2, 8, ours.dim_out)
    first = wrapper.generate(prompt, 1, cache_kv=False)
    assert max_diff(first, expected[:, :1]) <= 1e-5  # one step: the logits tolerance
    uncached = wrapper.generate(prompt, 8, cache_kv=False)
    assert max_diff(uncached, expected) <= CONTINUOUS_GENERATE_ATOL
    assert (
        max_diff(wrapper.generate(prompt, 8, cache_kv=True), expected) <= CONTINUOUS_GENERATE_ATOL
    )


def _segment_reference(model: nn.Module, prompt: Tensor, steps: int) -> Tensor:
    """Greedy XL decoding written out with full forwards: the current segment (the tokens
    after the last multiple of max_seq_len before the newest one) with the memories of all
    full segments before it."""
    seg, out = model.max_seq_len, prompt
    with torch.no_grad():
        for _ in range(steps):
            full = (out.shape[1] - 1) // seg
            mems = None
            for chunk in out[:, : full * seg].split(seg, dim=1) if full else []:
                _, mems = model(chunk, mems=mems, return_mems=True)
            logits = model(out[:, full * seg :], mems=mems)[:, -1]
            out = torch.cat((out, logits.argmax(-1, keepdim=True)), dim=1)
    return out[:, prompt.shape[1] :]


@pytest.mark.parametrize("row", XL)
def test_xl_generation_equals_segment_reference(row: Row) -> None:
    """XLAutoregressiveWrapper.generate (cached and not) equals greedy decoding written out
    with 1.28.2's forward (segments + memories), over several segment boundaries."""
    ours, theirs = make_pair(row)
    inp = make_inputs(row, ours)
    prompt = inp.x[:, :7]  # one full segment and a partial one for max_seq_len <= 6
    steps = 3 * ours.max_seq_len
    expected = _segment_reference(theirs, prompt, steps)
    wrapper = af.XLAutoregressiveWrapper(ours)
    assert torch.equal(wrapper.generate(prompt, steps, temperature=0.0, cache_kv=False), expected)
    assert torch.equal(wrapper.generate(prompt, steps, temperature=0.0, cache_kv=True), expected)


def test_defect_xl_generate_after_a_segment_boundary() -> None:
    """1.28.2's XLAutoregressiveWrapper.generate keeps the previous segment's cached keys after
    a boundary (and drops the segment from the memories): it matches the written-out decoding
    up to the first boundary only. (Its default top_k call also fails: a greedy filter is used.)"""
    row = next(r for r in ROWS if r.id == "xl")
    ours, theirs = make_pair(row)
    inp: Inputs = make_inputs(row, ours)
    prompt = inp.x[:, :3]
    steps = 12
    expected = _segment_reference(theirs, prompt, steps)
    assert torch.equal(_segment_reference(ours, prompt, steps), expected)

    def greedy(logits: Tensor, thres: float = 0.0) -> Tensor:
        best = logits.argmax(-1, keepdim=True)
        return torch.full_like(logits, float("-inf")).scatter(1, best, logits.gather(1, best))

    got = xt.XLAutoregressiveWrapper(theirs).generate(prompt, steps, filter_logits_fn=greedy)
    first = ours.max_seq_len - prompt.shape[1] + 1  # tokens decoded before the first boundary
    assert torch.equal(got[:, :first], expected[:, :first])
    assert not torch.equal(got, expected)
    with pytest.raises(TypeError, match="thres"):
        xt.XLAutoregressiveWrapper(theirs).generate(prompt, 2)


def test_interspersed_memory_generation_warns_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Interspersed memory tokens cannot decode with a KV cache: generate(cache_kv=True) says so
    once and decodes uncached, matching 1.28.2's greedy tokens."""
    monkeypatch.setattr(
        session, "_warned", session.WeakKeyDictionary()
    )  # a fresh process's once-only warnings
    row = next(r for r in ROWS if r.id == "memory-tokens-interspersed")
    ours, theirs = make_pair(row)
    assert ours.can_cache_kv is False and ours.capabilities()["kv_cache"] is False
    inp = make_inputs(row, ours)
    expected = _generate(xt, theirs, row, inp, cache_kv=False)
    wrapper = af.AutoregressiveWrapper(ours)
    with pytest.warns(UserWarning, match="cannot cache"):
        got = wrapper.generate(inp.x[:, :8], GENERATE_STEPS, temperature=0.0, cache_kv=True)
    assert torch.equal(got, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second call is silent
        wrapper.generate(inp.x[:, :8], 2, temperature=0.0, cache_kv=True)


def test_continuous_xl_memories_and_the_1_28_2_memory_defect() -> None:
    """ContinuousTransformerWrapper with Transformer-XL memories: outputs and first memories
    equal 1.28.2's. 1.28.2's continuous return_mems then keeps only the new segment's hiddens
    (its token wrapper keeps memory + segment, as ours do for both): its second memories are
    the last rows of ours."""
    torch.manual_seed(0)
    keywords = dict(max_seq_len=0, dim_in=6, dim_out=6, max_mem_len=10, use_abs_pos_emb=False)
    stack = dict(dim=16, depth=2, heads=2, attn_dim_head=32, rotary_pos_emb=True)
    ours = af.ContinuousTransformerWrapper(**keywords, attn_layers=af.Decoder(**stack)).eval()
    theirs = xt.ContinuousTransformerWrapper(**keywords, attn_layers=xt.Decoder(**stack)).eval()
    theirs.load_state_dict(to_x_transformers_state_dict(ours))
    x = torch.randn(2, 12, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out_o, mems_o = ours(x[:, :6], return_mems=True)
        out_t, mems_t = theirs(x[:, :6], return_mems=True)
        assert max_diff(out_o, out_t) <= 1e-5 and max_diff(mems_o[1], mems_t[1]) <= 1e-5
        second_o, new_o = ours(x[:, 6:], mems=mems_o, return_mems=True)
        second_t, new_t = theirs(x[:, 6:], mems=mems_t, return_mems=True)
        assert max_diff(second_o, second_t) <= 1e-5
        assert new_o[0].shape == (2, 10, 16) and new_t[0].shape == (2, 6, 16)
        assert max_diff(new_o[0][:, -6:], new_t[0]) <= 1e-5
