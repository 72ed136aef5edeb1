"""Phi-3: a tiny Hugging Face model with random weights (fused qkv_proj and gate_up_proj, partial
rotary, LongRoPE short/long factors), converted, gives the same logits and the same greedy
continuation; options that cannot be reproduced raise naming them."""

from __future__ import annotations

import json

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


def tiny(seed=0, arch="Phi3ForCausalLM", **overrides):
    config = transformers.Phi3Config(**_llama_kwargs(overrides))
    return _seeded(getattr(transformers, arch), config, seed)


def _longrope(original, rot_pairs=4, max_positions=64):
    short = [1.0 + 0.5 * i for i in range(rot_pairs)]
    long = [2.0**i for i in range(rot_pairs)]
    return {
        "max_position_embeddings": max_positions,
        "original_max_position_embeddings": original,  # top level: Phi3Config's own field
        "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0,
                            "short_factor": short, "long_factor": long},
    }  # fmt: skip


VARIANTS = {
    "gqa": {},
    "mha-tied": {"num_key_value_heads": 4, "tie_word_embeddings": True},
    "partial-rotary": {"partial_rotary_factor": 0.5},
    # the padded batch (12 tokens) is past original 8: long factors, attention factor sqrt(2)
    "longrope-long": _longrope(8),
    # ... and within original 16: short factors
    "longrope-short": _longrope(16),
    "longrope-partial": {**_longrope(8, rot_pairs=2), "partial_rotary_factor": 0.5},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_on_a_padded_batch(name):
    hf = tiny(**VARIANTS[name])
    model = from_hf(hf)
    assert isinstance(model, TransformerWrapper)
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).logits
        got = model(ids, mask=mask)
    assert got.shape == (3, 12, VOCAB)
    assert max_diff(got, expected, mask) < TOL


def test_longrope_factors_matter():
    """Short and long factors give different logits (so both sides above are tested)."""
    ids, _ = padded_batch()
    with torch.no_grad():
        long = from_hf(tiny(**_longrope(8)))(ids)
        short = from_hf(tiny(**_longrope(16)))(ids)
    assert max_diff(long, short) > 100 * TOL


GREEDY = {
    "gqa": ({}, 6),
    "partial-rotary": (VARIANTS["partial-rotary"], 6),
    "longrope-within": (_longrope(32), 6),  # 6 + 20 tokens stay within the original 32
    "longrope-past": (_longrope(8), 10),  # the prompt (10) is already past the original 8
}


@pytest.mark.parametrize("name", list(GREEDY))
def test_greedy_generation_equals_hugging_face(name):
    """LongRoPE decodes on one side of the original length agree; one that crosses it differs
    by design (Hugging Face recomputes the sequence at the crossing; see hf_phi3.py)."""
    overrides, prompt_len = GREEDY[name]
    hf = tiny(seed=5, **overrides)
    model = from_hf(hf)
    prompt = torch.randint(0, VOCAB, (2, prompt_len), generator=torch.Generator().manual_seed(6))
    expected = hf_greedy(hf, prompt, 20)
    assert torch.equal(our_greedy(model, prompt, 20), expected)


def test_hidden_states_of_phi3_model():
    hf = tiny(arch="Phi3Model", seed=2, **VARIANTS["partial-rotary"])
    model = from_hf(hf)
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).last_hidden_state
        assert max_diff(model(ids, mask=mask), expected, mask) < TOL


def test_from_hf_dir_equals_from_hf_and_reads_legacy_su(tmp_path):
    """A folder loads without transformers; the legacy rope type 'su' (transformers 4 Phi-3
    configs) is LongRoPE, as transformers reads it."""
    hf = tiny(seed=7, **VARIANTS["longrope-long"])
    hf.save_pretrained(tmp_path)
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))
    config = json.loads((tmp_path / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = {**{k: v for k, v in params.items() if k != "rope_type"}, "type": "su"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = from_hf_dir(tmp_path)
    assert model.attn_layers.config.positions.rotary_scaling == "longrope"
    ids, _ = padded_batch()
    with torch.no_grad():
        assert max_diff(model(ids), hf(ids).logits) < TOL
    assert supported_architectures()["Phi3ForCausalLM"] == "lm"


def test_sliding_window_matches():
    """sliding_window=4 on every layer (Phi-3-mini: 2047): the padded batch and the decode run
    past the window."""
    hf = tiny(seed=9, sliding_window=4)
    model = from_hf(hf)
    assert model.attn_layers.layers[0].branch.config.sliding_window == 4
    ids, mask = padded_batch()
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).logits
        assert max_diff(model(ids, mask=mask), expected, mask) < TOL
    assert torch.equal(our_greedy(model, prompt, 20), hf_greedy(hf, prompt, 20))


def test_bad_sliding_window_raises_naming_the_option(tmp_path):
    hf = tiny(seed=7)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["sliding_window"] = 0
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedHFModel, match="Phi3 config: option sliding_window=0"):
        from_hf_dir(tmp_path)


def test_other_activation_raises():
    with pytest.raises(UnsupportedHFModel, match="Phi3 config: option hidden_act='gelu'"):
        from_hf(tiny(hidden_act="gelu"))
