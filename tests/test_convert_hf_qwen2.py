"""Qwen2 (the fourth family): Llama-shaped with biases on q/k/v only; a tiny Hugging Face model
with random weights, converted, gives the same logits and greedy continuation."""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import TOL, VOCAB, hf_greedy, max_diff, our_greedy, padded_batch, same_parameters
from hf_models import tiny_qwen2 as tiny

from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir


@pytest.mark.parametrize(
    "overrides", [{}, {"num_key_value_heads": 1, "tie_word_embeddings": True}], ids=["gqa", "mqa"]
)
def test_logits_match_on_a_padded_batch(overrides):
    hf = tiny(**overrides)
    model = from_hf(hf)
    block = model.attn_layers.layers[0].branch
    assert block.qkv.to_qkv.bias is not None and block.to_out.bias is None
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).logits
        got = model(ids, mask=mask)
    assert got.shape == (3, 12, VOCAB)
    assert max_diff(got, expected, mask) < TOL


def test_greedy_generation_equals_hugging_face():
    hf = tiny(seed=5)
    model = from_hf(hf)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    assert torch.equal(our_greedy(model, prompt, 20), hf_greedy(hf, prompt, 20))


def test_from_hf_dir_equals_from_hf(tmp_path):
    hf = tiny(seed=7)
    hf.save_pretrained(tmp_path)
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))


def test_sliding_window_raises_naming_the_option(tmp_path):
    hf = tiny()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=4)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedHFModel, match="Qwen2 config: option use_sliding_window=True"):
        from_hf_dir(tmp_path)
