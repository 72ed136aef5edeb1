"""Every keyword of generate / stream / beam_search is checked when the call starts: a TypeError or
ValueError naming the keyword, what it expects and what it got."""

from __future__ import annotations

import re

import pytest
import torch

from anyformer import (
    AutoregressiveWrapper,
    ContinuousAutoregressiveWrapper,
    ContinuousTransformerWrapper,
    Decoder,
    TransformerWrapper,
    XLAutoregressiveWrapper,
)

V = 10
NAN, INF = float("nan"), float("inf")


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def net(seed=0, max_seq_len=8, **kwargs):
    torch.manual_seed(seed)
    stack = Decoder(dim=16, depth=1, heads=2, **kwargs.pop("stack", {}))
    return TransformerWrapper(num_tokens=V, max_seq_len=max_seq_len, attn_layers=stack, **kwargs)


@pytest.fixture(scope="module")
def wrapper():
    return AutoregressiveWrapper(net().eval())


PROMPT = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(1))

# keyword, value, error, message (the start of it)
SHARED = [
    ("seq_len", 0, ValueError, "seq_len must be an int >= 1, got 0"),
    ("seq_len", True, TypeError, "seq_len must be an int >= 1, got True (bool)"),
    ("seq_len", 2.0, TypeError, "seq_len must be an int >= 1, got 2.0 (float)"),
    ("eos_token", -1, ValueError, "eos_token must be None or an int token id in [0, 10)"),
    ("eos_token", 10, ValueError, "eos_token must be None or an int token id in [0, 10)"),
    ("eos_token", 1.0, TypeError, "eos_token must be None or an int token id in [0, 10)"),
    ("eos_token", False, TypeError, "eos_token must be None or an int token id in [0, 10)"),
    ("temperature", NAN, ValueError, "temperature must be a finite real number >= 0, got nan"),
    ("temperature", INF, ValueError, "temperature must be a finite real number >= 0, got inf"),
    ("temperature", -0.5, ValueError, "temperature must be a finite real number >= 0, got -0.5"),
    ("temperature", "1", TypeError, "temperature must be a finite real number >= 0, got '1'"),
    ("restrict_to_max_seq_len", 1, TypeError, "restrict_to_max_seq_len must be True or False"),
    ("cache_kv", None, TypeError, "cache_kv must be True or False, got None"),
    ("generator", 0, TypeError, "generator must be None or a torch.Generator, got int"),
    ("filter_kwargs", [0.5], TypeError, "filter_kwargs must be a dict of the filter's keywords"),
]
FILTERS = [
    ({"k": 0}, ValueError, "filter_kwargs of top_k: k must be >= 1, got 0"),
    ({"k": True}, TypeError, "filter_kwargs of top_k: k must be an int or None, got True"),
    ({"frac_num_tokens": NAN}, ValueError, "filter_kwargs of top_k: frac_num_tokens must be in"),
    ({"thres": 0.9}, TypeError, "filter_kwargs: 'thres' is not a keyword of top_k"),
]


def call(wrapper, mode, seq_len=3, **kwargs):
    if mode == "stream":  # checked when the stream is made, before any token is asked for
        return wrapper.stream(PROMPT, seq_len, **kwargs)
    return getattr(wrapper, mode)(PROMPT, seq_len, **kwargs)


@pytest.mark.parametrize("mode", ["generate", "stream", "beam_search"])
@pytest.mark.parametrize(("name", "value", "error", "message"), SHARED)
def test_shared_keywords(wrapper, mode, name, value, error, message):
    kwargs = {"seq_len": value} if name == "seq_len" else {name: value}
    with pytest.raises(error, match="^" + re.escape(message)):
        call(wrapper, mode, **kwargs)


@pytest.mark.parametrize("mode", ["generate", "stream", "beam_search"])
@pytest.mark.parametrize(("kwargs", "error", "message"), FILTERS)
def test_filter_kwargs_are_checked_before_decoding(wrapper, mode, kwargs, error, message):
    with pytest.raises(error, match="^" + re.escape(message)):
        call(wrapper, mode, filter_logits_fn="top_k", filter_kwargs=kwargs)


@pytest.mark.parametrize(
    ("fn", "kwargs", "message"),
    [
        ("top_p", {"thres": NAN}, "filter_kwargs of top_p: thres must be in (0, 1], got nan"),
        ("top_p", {"thres": 0.0}, "filter_kwargs of top_p: thres must be in (0, 1], got 0.0"),
        ("min_p", {"min_p": 1.5}, "filter_kwargs of min_p: min_p must be in [0, 1], got 1.5"),
        ("top_a", {"min_p_pow": INF}, "filter_kwargs of top_a: min_p_pow must be in [0, inf)"),
    ],
)
def test_other_filter_thresholds(wrapper, fn, kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        wrapper.generate(PROMPT, 3, filter_logits_fn=fn, filter_kwargs=kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"length_penalty": NAN},
            ValueError,
            "length_penalty must be a finite real number, got nan",
        ),
        (
            {"length_penalty": INF},
            ValueError,
            "length_penalty must be a finite real number, got inf",
        ),
        (
            {"length_penalty": "1"},
            TypeError,
            "length_penalty must be a finite real number, got '1'",
        ),
        ({"beams": 0}, ValueError, "beams must be an int >= 1, got 0"),
        ({"beams": 2.0}, TypeError, "beams must be an int >= 1, got 2.0 (float)"),
        ({"beams": True}, TypeError, "beams must be an int >= 1, got True (bool)"),
        ({"stochastic": 1}, TypeError, "stochastic must be True or False, got 1 (int)"),
        ({"return_beams_and_scores": "yes"}, TypeError, "return_beams_and_scores must be True"),
        (
            {"stochastic": True, "temperature": NAN},
            ValueError,
            "temperature must be a finite real number > 0, got nan",
        ),
        (
            {"stochastic": True, "temperature": 0},
            ValueError,
            "temperature must be a finite real number > 0, got 0",
        ),
    ],
)
def test_beam_search_keywords(wrapper, kwargs, error, message):
    with pytest.raises(error, match="^" + re.escape(message)):
        wrapper.beam_search(PROMPT, 3, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"return_intermediates": 1}, TypeError, "return_intermediates must be True or False"),
        ({"draft_tokens": 2.0}, TypeError, "draft_tokens must be an int >= 1, got 2.0 (float)"),
        ({"draft_tokens": False}, TypeError, "draft_tokens must be an int >= 1, got False"),
        (
            {"contrastive_decode_kwargs": {"beta": INF}},
            ValueError,
            "contrastive_decode_kwargs: beta must be finite, got inf",
        ),
        (
            {"contrastive_decode_kwargs": {"alpha": NAN}},
            ValueError,
            "contrastive_decode_kwargs: alpha must be finite, got nan",
        ),
    ],
)
def test_generate_only_keywords(wrapper, kwargs, error, message):
    if "draft_tokens" in kwargs:
        kwargs["draft_model"] = wrapper.net
    if "contrastive_decode_kwargs" in kwargs:
        kwargs["amateur_model"] = wrapper.net
    with pytest.raises(error, match="^" + re.escape(message)):
        wrapper.generate(PROMPT, 3, **kwargs)


@pytest.mark.parametrize("lens", [torch.tensor([2.5, 3.0]), torch.tensor([True, True])])
def test_prompt_lens_must_be_integers(wrapper, lens):
    with pytest.raises(ValueError, match=r"^prompt_lens must be a \(2,\) integer tensor, got"):
        wrapper.generate(PROMPT, 3, prompt_lens=lens)


def test_pad_value_outside_the_vocabulary(wrapper):
    bad = AutoregressiveWrapper(wrapper.net, pad_value=V)
    with pytest.raises(
        ValueError, match=r"^pad_value must be None or an int token id in \[0, 10\)"
    ):
        bad.generate(PROMPT, 3)


def test_valid_boundary_values_run(wrapper):
    out = wrapper.generate(PROMPT, 3, eos_token=V - 1, temperature=0, filter_kwargs={"k": 1})
    assert out.shape[0] == 2 and 1 <= out.shape[1] <= 3
    best = wrapper.beam_search(PROMPT, 3, beams=1, length_penalty=-1.0, eos_token=0)
    assert best.shape[0] == 2


def test_xl_and_continuous_generate_keywords():
    xl = XLAutoregressiveWrapper(net(max_mem_len=4))
    with pytest.raises(
        ValueError, match=r"^eos_token must be None or an int token id in \[0, 10\)"
    ):
        xl.generate(PROMPT, 3, eos_token=-1)
    with pytest.raises(ValueError, match=r"^temperature must be a finite real number >= 0"):
        xl.generate(PROMPT, 3, temperature=NAN)
    with pytest.raises(ValueError, match=r"^filter_thres must be a finite real number, got nan"):
        xl.generate(PROMPT, 3, filter_thres=NAN)
    stack = Decoder(dim=16, depth=1, heads=2)
    cont = ContinuousAutoregressiveWrapper(
        ContinuousTransformerWrapper(dim_in=4, dim_out=4, max_seq_len=8, attn_layers=stack)
    )
    with pytest.raises(TypeError, match=r"^cache_kv must be True or False, got 1"):
        cont.generate(torch.randn(1, 2, 4), 3, cache_kv=1)
    with pytest.raises(TypeError, match=r"^start_tokens must be a float tensor"):
        cont.generate(torch.zeros(1, 2, 4, dtype=torch.long), 3)


# --------------------------------------------------------------------------- no sliding window


def test_no_window_with_learned_positions_raises_up_front(wrapper):
    # prompt 3 + 7 new tokens reads positions 0..8: one past the learned table (max_seq_len=8)
    message = (
        "restrict_to_max_seq_len=False needs 9 positions (prompt length + seq_len - 1), but the "
        "model's learned absolute positional embedding has max_seq_len=8"
    )
    for mode in ("generate", "stream", "beam_search"):
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            call(wrapper, mode, seq_len=7, restrict_to_max_seq_len=False)


def test_no_window_fits_the_table_exactly(wrapper):
    # 3 + 6 - 1 = 8 positions: the whole table, no window needed, the same tokens either way
    free = wrapper.generate(PROMPT, 6, temperature=0, restrict_to_max_seq_len=False)
    windowed = wrapper.generate(PROMPT, 6, temperature=0, cache_kv=False)
    assert free.shape == (2, 6)
    assert torch.equal(free, windowed)


def test_no_window_extrapolates_with_relative_positions():
    # rotary positions: restrict_to_max_seq_len=False reads the whole sequence past max_seq_len;
    # the cached tokens equal a greedy recomputation over the whole sequence
    model = net(use_abs_pos_emb=False, stack={"rotary_pos_emb": True}).eval()
    out = AutoregressiveWrapper(model).generate(
        PROMPT[:1], 10, temperature=0, restrict_to_max_seq_len=False
    )
    seq = PROMPT[:1]
    for _ in range(10):
        seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq[:, 3:])


def test_no_window_with_a_learned_table_in_the_draft_model():
    target = net(use_abs_pos_emb=False, stack={"rotary_pos_emb": True}).eval()
    with pytest.raises(ValueError, match=r"the draft_model's learned absolute positional"):
        AutoregressiveWrapper(target).generate(
            PROMPT, 7, draft_model=net(1).eval(), restrict_to_max_seq_len=False
        )
