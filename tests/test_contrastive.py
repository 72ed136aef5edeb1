"""Contrastive decoding against the published formula (float64) and x-transformers 1.28.2."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from gen_models import (
    chi_square_p_value,
    decoder_net,
    float64_copy,
    prompt_list,
    x_transformers_twin,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer import AutoregressiveWrapper
from anyformer.generation import contrastive_logits


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def published(expert, amateur, alpha, beta):
    """O'Brien & Lewis 2023, Algorithm 2, entry by entry in float64 Python arithmetic.

    The plausibility set is Li et al. 2022's V_head = {x : p_expert(x) >= alpha * max p_expert}.
    """
    e, a = [float(v) for v in expert], [float(v) for v in amateur]
    top = max(e)
    z = sum(math.exp(v - top) for v in e)
    p = [math.exp(v - top) / z for v in e]
    head = [pi >= alpha * max(p) for pi in p]
    scores = [(1 + beta) * ei - beta * ai if h else -math.inf for ei, ai, h in zip(e, a, head)]
    return torch.tensor(scores, dtype=torch.float64)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    alpha=st.sampled_from([0.01, 0.1, 0.3, 0.9, 1.0]),
    beta=st.floats(0.0, 4.0),
    scale=st.floats(0.1, 6.0),
)
def test_scores_equal_the_published_formula(seed, alpha, beta, scale):
    g = torch.Generator().manual_seed(seed)
    expert = torch.randn(3, 17, generator=g, dtype=torch.float64) * scale
    amateur = torch.randn(3, 17, generator=g, dtype=torch.float64) * scale
    got = contrastive_logits(expert, amateur, alpha, beta)
    for row in range(3):
        want = published(expert[row], amateur[row], alpha, beta)
        assert torch.equal(torch.isinf(got[row]), torch.isinf(want))
        finite = ~torch.isinf(want)
        torch.testing.assert_close(got[row][finite], want[finite], atol=1e-12, rtol=0)
        assert bool(finite[expert[row].argmax()])  # the expert's favourite always survives


def test_scores_match_x_transformers_contrastive_decode_fn():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from x_transformers.autoregressive_wrapper import contrastive_decode_fn
    g = torch.Generator().manual_seed(0)
    expert, amateur = torch.randn(4, 50, generator=g) * 3, torch.randn(4, 50, generator=g) * 3
    ours = contrastive_logits(expert, amateur, alpha=0.2, beta=0.7)
    theirs = contrastive_decode_fn(expert, amateur, alpha=0.2, beta=0.7)
    cut = theirs == -torch.finfo(theirs.dtype).max  # x-transformers masks with -max, we with -inf
    assert torch.equal(torch.isneginf(ours), cut)
    torch.testing.assert_close(ours[~cut], theirs[~cut])


def _spy():
    seen = []

    def keep(logits):
        seen.append(logits.clone())
        return logits

    return seen, keep


@pytest.mark.parametrize(
    "configs",
    [(dict(alpha=0.1, beta=0.5),), (dict(alpha=0.2, beta=1.0), dict(alpha=0.05, beta=0.3))],
    ids=["one amateur", "two amateurs"],
)
def test_step_scores_equal_the_formula_on_float64_logits(configs):
    expert = decoder_net(seed=0)
    amateurs = [decoder_net(seed=1 + i, depth=1) for i in range(len(configs))]
    prompts = prompt_list((4, 7), seed=2)
    seen, keep = _spy()
    out = AutoregressiveWrapper(expert).generate(
        prompts,
        6,
        amateur_model=tuple(amateurs),
        contrastive_decode_kwargs=configs,
        filter_logits_fn=keep,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(seen) == 6
    e64, a64 = float64_copy(expert), [float64_copy(a) for a in amateurs]
    for row, prompt in enumerate(prompts):
        for t in range(6):
            seq = torch.cat((prompt, out[row, :t]))[None]
            scores = e64(seq)[0, -1]
            for model, config in zip(a64, configs):  # one amateur after the other
                scores = published(scores, model(seq)[0, -1], **config)
            got = seen[t][row].double()
            assert torch.equal(torch.isinf(got), torch.isinf(scores))
            finite = ~torch.isinf(scores)
            torch.testing.assert_close(got[finite], scores[finite], atol=1e-4, rtol=0)


@pytest.mark.parametrize("cache_kv", [True, False])
def test_greedy_equals_x_transformers_1_28_2(cache_kv):
    expert, amateur, amateur2 = decoder_net(seed=3), decoder_net(seed=4), decoder_net(seed=5)
    prompts = torch.randint(0, 32, (3, 6), generator=torch.Generator().manual_seed(6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from x_transformers import AutoregressiveWrapper as XAutoregressiveWrapper
    twin = XAutoregressiveWrapper(x_transformers_twin(expert))
    twins = (x_transformers_twin(amateur), x_transformers_twin(amateur2))
    ours = AutoregressiveWrapper(expert)
    for models, twin_models, kwargs in (
        ((amateur,), twins[:1], dict(alpha=0.1, beta=0.5)),
        ((amateur, amateur2), twins, (dict(alpha=0.1, beta=0.5), dict(alpha=0.3, beta=1.5))),
    ):
        got = ours.generate(
            prompts, 24, temperature=0, amateur_model=models, contrastive_decode_kwargs=kwargs,
            cache_kv=cache_kv,
        )  # fmt: skip
        want = twin.generate(
            prompts, 24, temperature=0.0, amateur_model=twin_models,
            contrastive_decode_kwargs=kwargs, cache_kv=False,
        )  # fmt: skip
        assert torch.equal(got, want)
    # contrastive decoding changes the output (premise of the comparison)
    assert not torch.equal(got, ours.generate(prompts, 24, temperature=0))


def test_cached_equals_uncached_and_rows_equal_alone():
    wrapper = AutoregressiveWrapper(decoder_net(seed=7))
    amateur = decoder_net(seed=8, depth=1)
    prompts = prompt_list((3, 9, 5), seed=9)
    kw = dict(temperature=0, amateur_model=amateur)
    cached, inter = wrapper.generate(prompts, 32, return_intermediates=True, **kw)
    uncached = wrapper.generate(prompts, 32, cache_kv=False, **kw)
    assert torch.equal(cached, uncached)
    for i, p in enumerate(prompts):
        assert torch.equal(wrapper.generate(p, 32, **kw), cached[i])
    # each model keeps its own cache: the prompts plus every generated token but the last
    assert inter.cache.length == inter.amateur_caches[0].length == 9 + 31
    assert inter.cache is not inter.amateur_caches[0]


def test_sampling_draws_from_the_contrastive_scores_without_a_filter():
    expert = decoder_net(seed=10, vocab=8, dim=16, depth=1, logit_scale=2.0)
    amateur = decoder_net(seed=11, vocab=8, dim=16, depth=1, logit_scale=2.0)
    prompt = prompt_list((3,), vocab=8, seed=12)[0]
    n = 8000
    out = AutoregressiveWrapper(expert).generate(
        prompt[None].expand(n, -1),
        1,
        temperature=0.8,
        amateur_model=amateur,
        contrastive_decode_kwargs=dict(alpha=0.05, beta=0.5),
        generator=torch.Generator().manual_seed(0),
    )
    e = float64_copy(expert)(prompt[None])[0, -1]
    a = float64_copy(amateur)(prompt[None])[0, -1]
    scores = published(e, a, 0.05, 0.5)
    truth = (scores / 0.8).softmax(dim=-1)
    assert int((truth > 0).sum()) >= 3  # premise: several plausible tokens (no default top-k)
    assert chi_square_p_value(torch.bincount(out[:, 0], minlength=8), truth) > 1e-3


def test_contrastive_argument_errors():
    wrapper = AutoregressiveWrapper(decoder_net())
    prompt = prompt_list((3,))[0]
    amateur = decoder_net(seed=1)
    with pytest.raises(ValueError, match="vocabulary"):
        wrapper.generate(prompt, 2, amateur_model=decoder_net(vocab=16))
    with pytest.raises(ValueError, match="2 dicts for 1 amateur"):
        wrapper.generate(prompt, 2, amateur_model=amateur, contrastive_decode_kwargs=({}, {}))
    with pytest.raises(TypeError, match="Did you mean 'alpha'"):
        wrapper.generate(
            prompt, 2, amateur_model=amateur, contrastive_decode_kwargs=dict(alpah=0.1)
        )
    with pytest.raises(ValueError, match="alpha"):
        wrapper.generate(
            prompt, 2, amateur_model=amateur, contrastive_decode_kwargs=dict(alpha=0.0)
        )
    with pytest.raises(TypeError, match="amateur_model"):
        wrapper.generate(prompt, 2, amateur_model=())
    with pytest.raises(ValueError, match="same shape"):
        contrastive_logits(torch.zeros(2, 5), torch.zeros(2, 6))
