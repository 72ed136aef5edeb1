"""Llama: a tiny Hugging Face model with random weights (GQA, rotary, RMSNorm, SwiGLU), converted,
gives the same logits and the same greedy continuation; folders load without transformers."""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import TOL, VOCAB, hf_greedy, max_diff, our_greedy, padded_batch, same_parameters
from hf_models import tiny_llama as tiny

from anyformer import TransformerWrapper
from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir
from anyformer.serialization import load_pretrained, save_pretrained

VARIANTS = {
    "gqa": {},
    "mha": {"num_key_value_heads": 4},
    "mqa": {"num_key_value_heads": 1},
    "theta-500k-eps": {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
                       "rms_norm_eps": 1e-5},
    "biases-tied": {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True},
    "wide-heads": {"head_dim": 16},  # heads * head_dim = 64 != hidden_size = 32
    "linear-rope": {"rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                        "rope_theta": 10000.0}},
    # Llama 3.1: with head_dim 16, theta 100 and original 64 the three wavelength bands are used
    "llama3": {"head_dim": 16, "rope_parameters": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64, "rope_theta": 100.0}},
    # YaRN: the ramp spans dimensions 1..5 of 8 (beta_fast 4); attention factor 0.1 ln 4 + 1
    "yarn": {"head_dim": 16, "max_position_embeddings": 256, "rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
        "beta_fast": 4, "beta_slow": 1, "rope_theta": 100.0}},
    "yarn-untruncated-mscale": {"head_dim": 16, "max_position_embeddings": 256,
                                "rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
        "beta_fast": 4, "beta_slow": 1, "truncate": False, "mscale": 0.8, "mscale_all_dim": 1.0,
        "rope_theta": 100.0}},
    "yarn-attention-factor": {"max_position_embeddings": 32, "rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
        "attention_factor": 1.3, "rope_theta": 10000.0}},
    # dynamic NTK: the padded batch (12) and the decode (26) run past max_position_embeddings=10
    "dynamic": {"max_position_embeddings": 10, "rope_parameters": {
        "rope_type": "dynamic", "factor": 3.0, "rope_theta": 10000.0}},
}  # fmt: skip
SCALED = ["llama3", "yarn", "yarn-untruncated-mscale", "yarn-attention-factor", "dynamic"]


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


def test_rope_theta_matters():
    """The converted model follows rope_theta: a model built with another base differs."""
    hf = tiny(rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    model = from_hf(hf)
    assert model.attn_layers.config.positions.rotary_theta == 500000.0
    ids, _ = padded_batch()
    other = tiny()  # same seed, same weights, theta 10000
    with torch.no_grad():
        assert max_diff(model(ids), hf(ids).logits) < TOL
        assert max_diff(model(ids), other(ids).logits) > 100 * TOL


def test_hidden_states_of_llama_model():
    hf = tiny(arch="LlamaModel", seed=2)
    model = from_hf(hf)
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).last_hidden_state
        got = model(ids, mask=mask)
    assert got.shape == (3, 12, 32)
    assert max_diff(got, expected, mask) < TOL


@pytest.mark.parametrize("name", ["gqa", "mqa", *SCALED])
def test_greedy_generation_equals_hugging_face(name):
    hf = tiny(seed=5, **VARIANTS[name])
    model = from_hf(hf)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    expected = hf_greedy(hf, prompt, 20)
    assert expected.shape == (2, 20)
    assert torch.equal(our_greedy(model, prompt, 20), expected)


def test_from_hf_dir_equals_from_hf(tmp_path):
    hf = tiny(seed=7)
    hf.save_pretrained(tmp_path)
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))


def test_transformers_4_config_layout(tmp_path):
    """config.json written by transformers 4.x: rope_theta and rope_scaling at the top level."""
    hf = tiny(seed=8, rope_parameters={"rope_type": "default", "rope_theta": 20000.0})
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["rope_parameters"]
    config.update(rope_theta=20000.0, rope_scaling=None, torch_dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = from_hf_dir(tmp_path)
    assert model.attn_layers.config.positions.rotary_theta == 20000.0
    same_parameters(model, from_hf(hf))


def test_bfloat16_folder_keeps_its_dtype(tmp_path):
    hf = tiny(seed=9).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = from_hf_dir(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    embed = hf.model.embed_tokens.weight
    assert torch.equal(model.token_emb.emb.weight, embed)
    ids, _ = padded_batch()
    with torch.no_grad():
        expected = hf(ids).logits.float()
        got = model(ids).float()
    assert max_diff(got, expected) < 0.05 * expected.abs().max().item()  # bfloat16 rounding


@pytest.mark.parametrize("name", SCALED)
def test_rope_scaling_matters(name):
    """The scaled model differs from plain rotary on the same weights by far more than the
    tolerance (so the comparisons above test the scaling)."""
    hf = tiny(**VARIANTS[name])
    plain = dict(VARIANTS[name], rope_parameters={"rope_type": "default", "rope_theta":
                 VARIANTS[name]["rope_parameters"]["rope_theta"]})  # fmt: skip
    ids, _ = padded_batch()
    with torch.no_grad():
        assert max_diff(from_hf(hf)(ids), tiny(**plain)(ids).logits) > 100 * TOL


def test_dynamic_ntk_extends_max_seq_len_by_the_factor():
    """Dynamic NTK's max_position_embeddings is the original length it extends: the converted
    model's max_seq_len is 10 * 3, so generation does not slide a window at 10."""
    model = from_hf(tiny(**VARIANTS["dynamic"]))
    assert model.max_seq_len == 30
    p = model.attn_layers.config.positions
    assert (p.rotary_scaling, p.rotary_original_max_seq_len, p.rotary_scaling_factor) == (
        "dynamic", 10, 3.0)  # fmt: skip


def test_transformers_4_llama3_rope_scaling(tmp_path):
    """A transformers 4.x config.json: rope_theta at the top level, rope_scaling with 'type'."""
    hf = tiny(seed=11, **VARIANTS["llama3"])
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = {"type" if k == "rope_type" else k: v for k, v in params.items()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = from_hf_dir(tmp_path)
    assert model.attn_layers.config.positions.rotary_scaling == "llama3"
    same_parameters(model, from_hf(hf))
    ids, _ = padded_batch()
    with torch.no_grad():
        assert max_diff(model(ids), hf(ids).logits) < TOL


@pytest.mark.parametrize("rope_type", ["proportional", "mrope"])
def test_unsupported_rope_types_raise_naming_the_option(tmp_path, rope_type):
    hf = tiny()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": rope_type, "factor": 2.0, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UnsupportedHFModel,
        match=rf"Llama config: option rope_parameters\['rope_type'\]='{rope_type}'",
    ):
        from_hf_dir(tmp_path)


def test_transformers_4_rope_scaling_raises_naming_it(tmp_path):
    hf = tiny()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["rope_parameters"]
    config["rope_scaling"] = {"type": "su", "factor": 2.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedHFModel, match=r"option rope_scaling\['rope_type'\]='su'"):
        from_hf_dir(tmp_path)


def test_other_activation_raises():
    with pytest.raises(UnsupportedHFModel, match="Llama config: option hidden_act='gelu'"):
        from_hf(tiny(hidden_act="gelu"))


def test_a_converted_model_saves_and_loads_as_an_anyformer_folder(tmp_path):
    hf = tiny(seed=10)
    model = from_hf(hf)
    save_pretrained(model, tmp_path / "ours")
    loaded = load_pretrained(tmp_path / "ours")
    ids, mask = padded_batch()
    with torch.no_grad():
        got = loaded(ids, mask=mask)
        assert torch.equal(got, model(ids, mask=mask))
        assert max_diff(got, hf(ids, attention_mask=mask.long()).logits, mask) < TOL


def test_partial_rotary_raises_naming_it(tmp_path):
    hf = tiny()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["partial_rotary_factor"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedHFModel, match=r"option partial_rotary_factor=0\.5"):
        from_hf_dir(tmp_path)
