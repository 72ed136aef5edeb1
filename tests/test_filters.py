"""Tests for anyformer.generation.filters against hand-computed distributions."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer.generation.filters import (
    FILTERS,
    min_p,
    resolve_filter,
    sample,
    top_a,
    top_k,
    top_p,
)

NEG_INF = float("-inf")
# the filters generate() accepts by name, from the reference (x-transformers.md, section 1.9.3)
FILTER_NAMES = ("top_k", "top_p", "top_a", "min_p")

# Hand-made distribution, deliberately *not* in sorted order so that the
# sort / scatter index bookkeeping is exercised. Ranked: idx1 (0.5), idx3 (0.25),
# idx0 (0.15), idx2 (0.1). Mass ranked strictly before each: 0, 0.5, 0.75, 0.9.
P = [0.15, 0.5, 0.1, 0.25]
# Dyadic distribution: every partial sum is exact in float32 (boundary tests).
# Ranked: idx2 (0.5), idx0 (0.25), idx3 (0.125), idx1 (0.125); masses before 0, .5, .75, .875.
D = [0.25, 0.125, 0.5, 0.125]


def logits_of(probs: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log().to(dtype)


def renorm(probs: list[float], keep: list[int]) -> list[float]:
    total = sum(probs[i] for i in keep)
    return [probs[i] / total if i in keep else 0.0 for i in range(len(probs))]


def kept_indices(out: torch.Tensor) -> list[int]:
    assert out.ndim == 1
    return torch.isfinite(out).nonzero().flatten().tolist()


def assert_filtered(
    out: torch.Tensor, logits: torch.Tensor, keep: list[int], expected: list[float]
) -> None:
    """`out` keeps exactly `keep` (unchanged values), the rest -inf, and renormalises to `expected`."""
    assert out.shape == logits.shape
    assert out.dtype == logits.dtype
    assert kept_indices(out) == sorted(keep)
    mask = torch.zeros(logits.shape[-1], dtype=torch.bool)
    mask[keep] = True
    assert torch.equal(out[mask], logits[mask])  # surviving logits bit-identical
    assert torch.all(out[~mask] == NEG_INF)
    torch.testing.assert_close(
        out.double().softmax(-1),
        torch.tensor(expected, dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )


# --------------------------------------------------------------------------- top_k


@pytest.mark.parametrize(
    ("kwargs", "keep"),
    [
        ({"k": 1}, [1]),
        ({"k": 2}, [1, 3]),
        ({"k": 3}, [0, 1, 3]),
        ({"k": 4}, [0, 1, 2, 3]),  # k == vocab
        ({"k": 50}, [0, 1, 2, 3]),  # k > vocab is clamped
        ({}, [1]),  # default frac 0.1 -> ceil(0.4) = 1
        ({"frac_num_tokens": 0.5}, [1, 3]),  # ceil(2.0) = 2
        ({"frac_num_tokens": 0.51}, [0, 1, 3]),  # ceil(2.04) = 3
        ({"frac_num_tokens": 1.0}, [0, 1, 2, 3]),
        ({"frac_num_tokens": 1e-9}, [1]),  # ceil of a tiny fraction still keeps 1
        ({"frac_num_tokens": 0.5, "k": 1}, [1]),  # explicit k wins over frac
    ],
)
def test_top_k_keeps_hand_computed_set(kwargs: dict, keep: list[int]) -> None:
    logits = logits_of(P)
    assert_filtered(top_k(logits, **kwargs), logits, keep, renorm(P, keep))


def test_top_k_default_frac_on_larger_vocab() -> None:
    logits = torch.arange(20, dtype=torch.float32)  # ceil(0.1 * 20) = 2 -> indices 18, 19
    assert kept_indices(top_k(logits)) == [18, 19]
    assert kept_indices(top_k(logits, frac_num_tokens=0.26)) == [14, 15, 16, 17, 18, 19]


def test_top_k_ties_keep_exactly_k() -> None:
    logits = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0])
    out = top_k(logits, k=2)
    kept = kept_indices(out)
    assert len(kept) == 2
    assert set(kept) <= {1, 2, 3}
    assert torch.all(out[kept] == 3.0)


# --------------------------------------------------------------------------- top_p


@pytest.mark.parametrize(
    ("thres", "keep"),
    [
        (0.01, [1]),
        (0.3, [1]),
        (0.5, [1]),  # boundary: top token's mass 0.5 already reaches thres
        (0.5001, [1, 3]),
        (0.6, [1, 3]),
        (0.75, [1, 3]),  # boundary: 0.5 + 0.25 == 0.75 exactly
        (0.7501, [0, 1, 3]),
        (0.8, [0, 1, 3]),
        (0.8999, [0, 1, 3]),
        (0.95, [0, 1, 2, 3]),
        (1.0, [0, 1, 2, 3]),
    ],
)
def test_top_p_keeps_hand_computed_set(thres: float, keep: list[int]) -> None:
    logits = logits_of(P)
    assert_filtered(top_p(logits, thres=thres), logits, keep, renorm(P, keep))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("thres", "keep"),
    [
        (0.5, [2]),
        (0.75, [0, 2]),
        (0.875, [0, 1, 2]),  # exact boundary; the 0.125 tie is broken by lower index
        (0.876, [0, 1, 2, 3]),
    ],
)
def test_top_p_exact_dyadic_boundaries(dtype: torch.dtype, thres: float, keep: list[int]) -> None:
    logits = logits_of(D, dtype)
    assert_filtered(top_p(logits, thres=thres), logits, keep, renorm(D, keep))


def test_top_p_default_threshold() -> None:
    # default thres 0.9; ranked masses before: idx2 0, idx0 .5, idx3 .8, idx1 .95
    probs = [0.3, 0.05, 0.5, 0.15]
    logits = logits_of(probs)
    assert_filtered(top_p(logits), logits, [0, 2, 3], renorm(probs, [0, 2, 3]))


def test_top_p_uniform_ties_break_by_index() -> None:
    logits = torch.zeros(4)
    assert kept_indices(top_p(logits, thres=0.5)) == [0, 1]  # 0.25 + 0.25 == 0.5 exactly
    assert kept_indices(top_p(logits, thres=0.51)) == [0, 1, 2]


def test_top_p_respects_existing_neg_inf() -> None:
    logits = torch.tensor([0.0, NEG_INF, 0.0, NEG_INF])
    out = top_p(logits, thres=1.0)
    assert kept_indices(out) == [0, 2]
    assert kept_indices(top_p(logits, thres=0.5)) == [0]


# --------------------------------------------------------------------------- top_a


@pytest.mark.parametrize(
    ("kwargs", "keep"),
    [
        ({}, [0, 1, 2, 3]),  # limit 0.02 * 0.5**2 = 0.005
        ({"min_p_ratio": 0.5}, [0, 1, 3]),  # limit 0.125
        ({"min_p_ratio": 0.8}, [1, 3]),  # limit 0.2
        ({"min_p_ratio": 1.0}, [1, 3]),  # limit 0.25: boundary, p == limit is kept
        ({"min_p_ratio": 0.0}, [0, 1, 2, 3]),
        ({"min_p_pow": 1.0, "min_p_ratio": 0.25}, [0, 1, 3]),  # limit 0.125
        ({"min_p_pow": 1.0, "min_p_ratio": 0.5}, [1, 3]),  # limit 0.25 (boundary)
        ({"min_p_pow": 1.0, "min_p_ratio": 0.51}, [1]),  # limit 0.255
        ({"min_p_pow": 3.0, "min_p_ratio": 0.9}, [0, 1, 3]),  # limit 0.1125
        ({"min_p_pow": 0.0, "min_p_ratio": 0.2}, [1, 3]),  # limit 0.2
        ({"min_p_pow": 0.0, "min_p_ratio": 0.9}, [1]),  # limit capped at max_p: argmax survives
    ],
)
def test_top_a_keeps_hand_computed_set(kwargs: dict, keep: list[int]) -> None:
    logits = logits_of(P)
    assert_filtered(top_a(logits, **kwargs), logits, keep, renorm(P, keep))


# --------------------------------------------------------------------------- min_p


@pytest.mark.parametrize(
    ("value", "keep"),
    [
        (0.0, [0, 1, 2, 3]),
        (0.1, [0, 1, 2, 3]),  # limit 0.05
        (0.2, [0, 1, 2, 3]),  # limit 0.1: boundary, the 0.1 token is kept
        (0.25, [0, 1, 3]),  # limit 0.125
        (0.5, [1, 3]),  # limit 0.25: boundary
        (0.6, [1]),  # limit 0.3
        (1.0, [1]),
    ],
)
def test_min_p_keeps_hand_computed_set(value: float, keep: list[int]) -> None:
    logits = logits_of(P, torch.float64)  # float64 so the 0.2 boundary is exact
    assert_filtered(min_p(logits, min_p=value), logits, keep, renorm(P, keep))


def test_min_p_default_and_ties_at_max() -> None:
    logits = logits_of([0.45, 0.45, 0.06, 0.04])  # default limit 0.045
    assert kept_indices(min_p(logits)) == [0, 1, 2]
    assert kept_indices(min_p(logits, min_p=1.0)) == [0, 1]  # both tied maxima survive


# --------------------------------------------------------------------------- batching


BATCH_CASES = [
    (top_k, {"k": 2}, [[1, 3], [0, 2]]),
    (top_p, {"thres": 0.6}, [[1, 3], [0, 2]]),
    (top_a, {"min_p_ratio": 0.55}, [[0, 1, 3], [0, 2]]),  # limit 0.1375 in both rows
    (min_p, {"min_p": 0.26}, [[0, 1, 3], [0, 2]]),  # limit 0.13 in both rows
]
# second row, ranked: idx2 (0.5), idx0 (0.25), idx3 (0.125), idx1 (0.125)
BATCH_PROBS = [P, D]


@pytest.mark.parametrize(("fn", "kwargs", "keeps"), BATCH_CASES)
def test_filters_batched_2d(fn, kwargs: dict, keeps: list[list[int]]) -> None:
    logits = torch.stack([logits_of(p) for p in BATCH_PROBS])
    out = fn(logits, **kwargs)
    assert out.shape == (2, 4)
    for row, (probs, keep) in enumerate(zip(BATCH_PROBS, keeps)):
        assert_filtered(out[row], logits[row], keep, renorm(probs, keep))


@pytest.mark.parametrize(("fn", "kwargs", "keeps"), BATCH_CASES)
def test_filters_batched_3d(fn, kwargs: dict, keeps: list[list[int]]) -> None:
    rows = torch.stack([logits_of(p) for p in BATCH_PROBS])  # (2, 4)
    # (3, 2, 4): batch entry b is rows rolled by b along the batch dim, plus a constant
    # shift (softmax-invariant, so the kept sets are unchanged)
    logits = torch.stack([rows.roll(b, dims=0) + float(b) for b in range(3)])
    out = fn(logits, **kwargs)
    assert out.shape == (3, 2, 4)
    for b in range(3):
        for t in range(2):
            src = (t - b) % 2
            probs, keep = BATCH_PROBS[src], keeps[src]
            assert_filtered(out[b, t], logits[b, t], keep, renorm(probs, keep))


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_batched_matches_row_by_row(name: str) -> None:
    fn = resolve_filter(name)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 17, generator=gen) * 3
    out = fn(logits)
    for idx in [(b, t) for b in range(2) for t in range(3)]:
        assert torch.equal(out[idx], fn(logits[idx]))


# --------------------------------------------------------------------------- purity / dtype / sync


@pytest.mark.parametrize("name", FILTER_NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_filters_do_not_mutate_and_keep_dtype(name: str, dtype: torch.dtype) -> None:
    logits = (torch.randn(3, 11, generator=torch.Generator().manual_seed(1)) * 2).to(dtype)
    before = logits.clone()
    out = resolve_filter(name)(logits)
    assert torch.equal(logits, before)
    assert out.dtype == dtype
    assert out.data_ptr() != logits.data_ptr()
    finite = torch.isfinite(out)
    assert finite.any(-1).all()  # every row keeps at least one token
    assert torch.equal(out[finite], logits[finite])


def test_filters_do_not_mutate_with_thres_one_shortcut() -> None:
    logits = torch.randn(5)
    before = logits.clone()
    out = top_p(logits, thres=1.0)
    out[0] = NEG_INF
    assert torch.equal(logits, before)


def test_sample_does_not_mutate() -> None:
    logits = torch.randn(4, 9)
    before = logits.clone()
    sample(logits, 0.7, generator=torch.Generator().manual_seed(0))
    sample(logits, 0.0)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_filters_run_on_meta_tensors(name: str) -> None:
    # Any host-device sync (.item(), bool(tensor), data-dependent shapes) fails on meta.
    logits = torch.empty(2, 3, 50, device="meta")
    out = resolve_filter(name)(logits)
    assert out.device.type == "meta"
    assert out.shape == logits.shape
    assert sample(logits, 0.8).shape == (2, 3)
    assert sample(logits, 0.0).shape == (2, 3)


# --------------------------------------------------------------------------- sample


def test_sample_temperature_zero_is_argmax() -> None:
    logits = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(2))
    out = sample(logits, 0.0)
    assert out.dtype == torch.long
    assert out.shape == (3, 5)
    assert torch.equal(out, logits.argmax(-1))
    assert torch.equal(sample(logits, 0), logits.argmax(-1))  # int 0 works too


@pytest.mark.parametrize("temperature", [1e-4, 0.5, 1.0, 10.0])
def test_sample_single_finite_logit_is_always_chosen(temperature: float) -> None:
    n, vocab = 2000, 7
    gen = torch.Generator().manual_seed(3)
    target = torch.randint(vocab, (n,), generator=gen)
    logits = torch.full((n, vocab), NEG_INF)
    logits[torch.arange(n), target] = torch.randn(n, generator=gen) * 5
    out = sample(logits, temperature, generator=gen)
    assert torch.equal(out, target)


def _frequencies(draws: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(draws.flatten(), minlength=vocab).double() / draws.numel()


@pytest.mark.parametrize(
    ("fn", "kwargs", "keep"),
    [
        (top_p, {"thres": 0.8}, [0, 1, 3]),
        (top_k, {"k": 2}, [1, 3]),
        (min_p, {"min_p": 0.1}, [0, 1, 2, 3]),
    ],
)
def test_sample_frequencies_match_filtered_distribution(fn, kwargs: dict, keep: list[int]) -> None:
    n = 20000
    logits = fn(logits_of(P), **kwargs).expand(n, 4)
    draws = sample(logits, 1.0, generator=torch.Generator().manual_seed(4))
    expected = torch.tensor(renorm(P, keep), dtype=torch.float64)
    freq = _frequencies(draws, 4)
    # std of a frequency is <= sqrt(0.25 / 20000) ~ 0.0035; allow ~4 sigma
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
    dropped = [i for i in range(4) if i not in keep]
    assert freq[dropped].sum().item() == 0.0  # filtered tokens are never drawn


def test_sample_temperature_reshapes_distribution() -> None:
    # T = 2 -> p_i ** (1/2), renormalised, hand-computed on P = [.15, .5, .1, .25]
    roots = [math.sqrt(p) for p in P]
    expected = torch.tensor([r / sum(roots) for r in roots], dtype=torch.float64)
    n = 20000
    draws = sample(
        logits_of(P).expand(2, n // 2, 4), 2.0, generator=torch.Generator().manual_seed(5)
    )
    assert draws.shape == (2, n // 2)
    torch.testing.assert_close(_frequencies(draws, 4), expected, atol=0.015, rtol=0)


def test_sample_draws_from_the_given_generator_only() -> None:
    logits = torch.randn(64, 30)
    # the global RNG is moved between the calls: equal draws mean the generator decided them
    torch.manual_seed(100)
    a = sample(logits, 1.0, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(200)
    state = torch.get_rng_state()
    b = sample(logits, 1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # and the global RNG was not consumed
    c = sample(logits, 1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert (a != c).sum() > 10  # another seed, other draws (30-way choices: few collide)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda x: top_p(x, thres=0.0), r"thres must be in \(0, 1\], got 0.0"),
        (lambda x: top_p(x, thres=1.5), r"thres must be in \(0, 1\], got 1.5"),
        (lambda x: top_p(x, thres=-0.2), r"thres must be in \(0, 1\], got -0.2"),
        (lambda x: top_p(x, thres=float("nan")), r"thres must be in \(0, 1\], got nan"),
        (lambda x: top_k(x, k=0), r"k must be >= 1, got 0"),
        (lambda x: top_k(x, k=-3), r"k must be >= 1, got -3"),
        (
            lambda x: top_k(x, frac_num_tokens=0.0),
            r"frac_num_tokens must be in \(0, 1\], got 0.0",
        ),
        (
            lambda x: top_k(x, frac_num_tokens=1.2),
            r"frac_num_tokens must be in \(0, 1\], got 1.2",
        ),
        (lambda x: min_p(x, min_p=-0.1), r"min_p must be in \[0, 1\], got -0.1"),
        (lambda x: min_p(x, min_p=1.1), r"min_p must be in \[0, 1\], got 1.1"),
        (lambda x: top_a(x, min_p_ratio=1.5), r"min_p_ratio must be in \[0, 1\], got 1.5"),
        (lambda x: top_a(x, min_p_pow=-1.0), r"min_p_pow must be in \[0, inf\), got -1.0"),
        (lambda x: sample(x, -0.5), r"temperature must be in \[0, inf\), got -0.5"),
        (lambda x: sample(x, float("inf")), r"temperature must be in \[0, inf\), got inf"),
    ],
)
def test_invalid_arguments_raise_value_error(call, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        call(torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda x: top_k(x, k=2.5), r"k must be an int or None, got 2.5"),
        (lambda x: top_k(x, k=True), r"k must be an int or None, got True"),
        (lambda x: top_p(x, thres="0.9"), r"thres must be a real number, got '0.9'"),
        (lambda x: sample(x, None), r"temperature must be a real number, got None"),
    ],
)
def test_wrong_argument_types_raise_type_error(call, pattern: str) -> None:
    with pytest.raises(TypeError, match=pattern):
        call(torch.zeros(2, 4))


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_bad_logits_are_rejected(name: str) -> None:
    fn = resolve_filter(name)
    with pytest.raises(TypeError, match=r"floating-point tensor, got dtype torch.int64"):
        fn(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"at least one dimension"):
        fn(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"non-empty last \(vocab\) dimension"):
        fn(torch.zeros(2, 0))


# --------------------------------------------------------------------------- resolve_filter


def test_filters_registry_names() -> None:
    assert {"top_k": top_k, "top_p": top_p, "top_a": top_a, "min_p": min_p} == FILTERS
    assert tuple(FILTERS) == FILTER_NAMES  # the order the error message lists them in
    for name, fn in FILTERS.items():
        assert resolve_filter(name) is fn


def test_resolve_filter_passes_callables_through() -> None:
    def custom(logits: torch.Tensor) -> torch.Tensor:
        return logits

    assert resolve_filter(custom) is custom
    assert resolve_filter(top_a) is top_a


def test_resolve_filter_unknown_name_with_suggestion() -> None:
    with pytest.raises(ValueError) as info:
        resolve_filter("top-p")
    msg = str(info.value)
    assert "filter_logits_fn" in msg
    assert "'top_k', 'top_p', 'top_a', 'min_p'" in msg
    assert "got 'top-p'" in msg
    assert "Did you mean 'top_p'?" in msg


def test_resolve_filter_unknown_name_without_suggestion() -> None:
    with pytest.raises(ValueError, match=re.escape("got 'banana'")) as info:
        resolve_filter("banana")
    assert "filter_logits_fn" in str(info.value)
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize("bad", [3, None, 0.5, ["top_p"]])
def test_resolve_filter_non_callable_raises_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match=r"filter_logits_fn must be a callable") as info:
        resolve_filter(bad)
    assert repr(bad) in str(info.value)


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-15.0, max_value=15.0, allow_nan=False), min_size=1, max_size=40
    ),
    thres=st.floats(min_value=1e-6, max_value=1.0),
)
def test_top_p_property_minimal_nucleus(values: list[float], thres: float) -> None:
    logits = torch.tensor(values, dtype=torch.float64)
    out = top_p(logits, thres=thres)
    probs = logits.softmax(-1)
    kept = torch.isfinite(out)
    tol = 1e-9

    assert kept[logits.argmax()]  # the most probable token always survives
    assert torch.equal(out[kept], logits[kept])
    kept_mass = probs[kept].sum().item()
    assert kept_mass >= thres - tol
    # the kept set is a top set: no dropped token is more probable than a kept one
    if not kept.all():
        assert probs[kept].min() >= probs[~kept].max()
    # minimality: dropping the least probable kept token leaves mass below thres
    if kept.sum() > 1:
        assert kept_mass - probs[kept].min().item() < thres + tol


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-15.0, max_value=15.0, allow_nan=False), min_size=1, max_size=40
    ),
    k=st.integers(min_value=1, max_value=60),
    ratio=st.floats(min_value=0.0, max_value=1.0),
)
def test_other_filters_property(values: list[float], k: int, ratio: float) -> None:
    logits = torch.tensor(values, dtype=torch.float64)
    probs = logits.softmax(-1)
    max_p = probs.max()

    out_k = top_k(logits, k=k)
    assert torch.isfinite(out_k).sum().item() == min(k, len(values))
    kept = torch.isfinite(out_k)
    if not kept.all():
        assert logits[kept].min() >= logits[~kept].max()

    out_m = min_p(logits, min_p=ratio)
    assert torch.equal(torch.isfinite(out_m), probs >= ratio * max_p)
    assert torch.isfinite(out_m[logits.argmax()])

    out_a = top_a(logits, min_p_ratio=ratio)
    assert torch.equal(torch.isfinite(out_a), probs >= ratio * max_p**2)
