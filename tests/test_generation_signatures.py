"""``stream`` takes ``generate``'s parameters (declared once, with ``keywords_of``)."""

from __future__ import annotations

import inspect

import pytest
import torch
from gen_models import decoder_net, greedy_by_hand

from anyformer import AutoregressiveWrapper
from anyformer.generation.signatures import keywords_of

GENERATE_ORDER = [
    "self",
    "prompts",
    "seq_len",
    "eos_token",
    "temperature",
    "prompt_lens",
    "filter_logits_fn",
    "restrict_to_max_seq_len",
    "amateur_model",
    "filter_kwargs",
    "contrastive_decode_kwargs",
    "cache_kv",
]  # fmt: skip  (x-transformers 1.28's positional order)


def test_stream_has_generate_parameters_without_return_intermediates():
    stream = list(inspect.signature(AutoregressiveWrapper.stream).parameters)
    generate = list(inspect.signature(AutoregressiveWrapper.generate).parameters)
    assert stream[: len(GENERATE_ORDER)] == GENERATE_ORDER
    assert stream == [p for p in generate if p != "return_intermediates"]
    assert inspect.signature(AutoregressiveWrapper.stream).return_annotation == "Iterator[Tensor]"


def test_stream_takes_positional_and_keyword_arguments():
    net = decoder_net(seed=2)
    lm = AutoregressiveWrapper(net)
    prompt = torch.tensor([3, 5, 7])
    expected = greedy_by_hand(net, prompt, 6)
    positional = torch.stack(list(lm.stream(prompt, 6, None, 0.0)))
    keywords = torch.stack(list(lm.stream(prompts=prompt, seq_len=6, temperature=0.0)))
    assert torch.equal(positional, expected)
    assert torch.equal(keywords, expected)


def test_stream_rejects_a_missing_argument_naming_itself():
    lm = AutoregressiveWrapper(decoder_net(seed=2))
    with pytest.raises(TypeError, match=r"stream\(\): missing a required argument: 'seq_len'"):
        lm.stream(torch.tensor([3, 5]))


def test_keywords_of_refuses_an_unknown_parameter():
    def source(self, a: int, b: int = 2) -> int:
        return a + b

    with pytest.raises(ValueError, match="source has no parameter 'c'"):
        keywords_of(source, drop="c")
