"""Mistral: a tiny Hugging Face model with random weights and a tiny sliding window (4-6 keys,
sequences of 12-26 tokens so that the window matters), converted, gives the same logits on a
padded batch and the same 20 greedy tokens with the cache; without ``sliding_window`` it is full
causal attention; options that cannot be reproduced raise naming them."""

from __future__ import annotations

import pytest
import torch
from hf_models import (
    TOL,
    VOCAB,
    _llama_kwargs,
    _seeded,
    hf_greedy,
    max_diff,
    our_greedy,
    padded_batch,
    same_parameters,
    transformers,
)

from anyformer import TransformerWrapper
from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir, supported_architectures


def tiny(seed=0, arch="MistralForCausalLM", **overrides):
    config = transformers.MistralConfig(**_llama_kwargs({"sliding_window": 4, **overrides}))
    return _seeded(getattr(transformers, arch), config, seed)


VARIANTS = {
    "window-4": {},
    "window-6-head-dim": {"sliding_window": 6, "head_dim": 16},
    "no-window": {"sliding_window": None},
    "mha-tied": {"num_key_value_heads": 4, "tie_word_embeddings": True},
}

LENS = (12, 7, 10)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_on_a_padded_batch(name):
    hf = tiny(**VARIANTS[name])
    model = from_hf(hf)
    assert isinstance(model, TransformerWrapper)
    window = VARIANTS[name].get("sliding_window", 4)
    assert model.attn_layers.layers[0].branch.config.sliding_window == window
    ids, mask = padded_batch(LENS)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).logits
        got = model(ids, mask=mask)
    assert got.shape == (3, 12, VOCAB)
    assert max_diff(got, expected, mask) < TOL


def test_the_window_matters():
    """The converted window-4 model differs from the same weights with full attention past the
    window and agrees within it."""
    hf = tiny(seed=4)
    model = from_hf(hf)
    full = from_hf(tiny(seed=4, sliding_window=None))
    ids = torch.randint(0, VOCAB, (2, 14), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = model(ids), full(ids)
    assert max_diff(a[:, :4], b[:, :4]) < TOL
    assert max_diff(a[:, 4:], b[:, 4:]) > 100 * TOL


@pytest.mark.parametrize("name", ["window-4", "no-window"])
def test_greedy_generation_equals_hugging_face(name):
    hf = tiny(seed=5, **VARIANTS[name])
    model = from_hf(hf)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    expected = hf_greedy(hf, prompt, 20)  # 26 tokens: far past the window of 4
    assert torch.equal(our_greedy(model, prompt, 20), expected)


def test_hidden_states_of_mistral_model():
    hf = tiny(arch="MistralModel", seed=2)
    model = from_hf(hf)
    ids, mask = padded_batch(LENS)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).last_hidden_state
        assert max_diff(model(ids, mask=mask), expected, mask) < TOL


def test_from_hf_dir_equals_from_hf(tmp_path):
    hf = tiny(seed=7)
    hf.save_pretrained(tmp_path)
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))
    assert supported_architectures()["MistralForCausalLM"] == "lm"
    assert supported_architectures()["MistralModel"] == "hidden"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_act": "gelu"}, "Mistral config: option hidden_act='gelu'"),
        ({"sliding_window": 0}, "Mistral config: option sliding_window=0"),
    ],
)
def test_unsupported_options_raise_naming_them(overrides, message):
    config = tiny().config.to_dict()
    config.update(overrides)
    from anyformer.convert.hf import _convert

    with pytest.raises(UnsupportedHFModel, match=message):
        _convert(config, "MistralForCausalLM", tiny().state_dict(), "test", torch.float32, "cpu")
