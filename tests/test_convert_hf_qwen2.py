"""Qwen2 (the fourth family): Llama-shaped with biases on q/k/v only; a tiny Hugging Face model
with random weights, converted, gives the same logits and greedy continuation, sliding-window
layers included (both directions)."""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import TOL, VOCAB, hf_greedy, max_diff, our_greedy, padded_batch, same_parameters
from hf_models import tiny_qwen2 as tiny

from anyformer import Decoder, TransformerWrapper
from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir, to_hf, to_hf_dir

transformers = pytest.importorskip("transformers")


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


# transformers' Qwen2 slides from layer max_window_layers on (the first ones stay full) when
# use_sliding_window=True and layer_types is absent; windows of 4 keys on 12-token sequences
_WINDOWS = dict(num_hidden_layers=3, use_sliding_window=True, sliding_window=4, max_window_layers=1)


def test_sliding_windows_match_transformers_past_the_window():
    hf = tiny(seed=3, **_WINDOWS)
    assert hf.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    model = from_hf(hf)
    attention = model.attn_layers.config.attention
    assert [attention.window_of_layer(i) for i in range(3)] == [None, 4, 4]
    ids, mask = padded_batch()
    full = tiny(seed=3, **{**_WINDOWS, "use_sliding_window": False})
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).logits
        unwindowed = full(ids, attention_mask=mask.long()).logits
        got = model(ids, mask=mask)
    assert max_diff(expected, unwindowed, mask) > 1e-3  # the windows change the outputs
    assert max_diff(got, expected, mask) < TOL


def test_sliding_window_greedy_generation_past_the_window():
    hf = tiny(seed=4, **_WINDOWS)
    model = from_hf(hf)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    assert torch.equal(our_greedy(model, prompt, 20), hf_greedy(hf, prompt, 20))


def test_layer_types_override_max_window_layers(tmp_path):
    hf = tiny(seed=5, **_WINDOWS)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = from_hf_dir(tmp_path)
    attention = model.attn_layers.config.attention
    assert [attention.window_of_layer(i) for i in range(3)] == [4, None, 4]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        assert (
            max_diff(model(ids, mask=mask), reloaded(ids, attention_mask=mask.long()).logits, mask)
            < TOL
        )


def test_unknown_layer_types_raise_naming_the_option(tmp_path):
    hf = tiny()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(layer_types=["chunked_attention", "full_attention"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UnsupportedHFModel, match="Qwen2 config: option layer_types='chunked_attention'"
    ):
        from_hf_dir(tmp_path)


@pytest.mark.parametrize("windows", [(None, 4, 4), (4, None, 4)], ids=["from-layer-1", "mixed"])
def test_windowed_models_export_to_qwen2(windows, tmp_path):
    model = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=128, attn_layers=Decoder(
            dim=32, depth=3, heads=4, attn_kv_heads=2, attn_dim_head=8, use_rmsnorm=True,
            norm_eps=1e-6, ff_glu=True, ff_swish=True, ff_inner_dim=48, ff_no_bias=True,
            rotary_pos_emb=True, attn_qkv_bias=True, attn_sliding_window=windows,
        ),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    folder = to_hf_dir(model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["sliding_window"] == 4
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert [w == "sliding_attention" for w in hf.config.layer_types] == [w == 4 for w in windows]
    ids, mask = padded_batch()
    with torch.no_grad():
        assert (
            max_diff(model(ids, mask=mask), hf(ids, attention_mask=mask.long()).logits, mask) < TOL
        )
    same_parameters(model, from_hf_dir(folder))


def test_two_window_sizes_are_refused_naming_the_option(tmp_path):
    model = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=128, attn_layers=Decoder(
            dim=32, depth=2, heads=4, attn_dim_head=8, use_rmsnorm=True, ff_glu=True,
            ff_swish=True, ff_no_bias=True, rotary_pos_emb=True, attn_qkv_bias=True,
            attn_sliding_window=(4, 8),
        ),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"attn_sliding_window=\(4, 8\)"):
        to_hf(model, family="qwen2")
