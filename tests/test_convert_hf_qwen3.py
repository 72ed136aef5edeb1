"""Qwen3: a tiny Hugging Face model with random weights (per-head q/k RMSNorm before rotary,
head_dim independent of hidden_size, GQA, SwiGLU), converted, gives the same logits and the same
greedy continuation; the q/k norm against a float64 hand computation; options that cannot be
reproduced raise naming them."""

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

from anyformer import Decoder, TransformerWrapper
from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir, supported_architectures
from anyformer.nn.qk_norm import QKRMSNorm


def tiny(seed=0, arch="Qwen3ForCausalLM", **overrides):
    config = transformers.Qwen3Config(**_llama_kwargs({"head_dim": 8, **overrides}))
    model = _seeded(getattr(transformers, arch), config, seed)
    with torch.no_grad():  # the q/k norm gains start at one: make them matter
        g = torch.Generator().manual_seed(seed + 100)
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


VARIANTS = {
    "gqa": {},
    "mha": {"num_key_value_heads": 4},
    "wide-heads-eps": {"head_dim": 16, "rms_norm_eps": 1e-2},
    "biases-tied": {"attention_bias": True, "tie_word_embeddings": True},
    "yarn": {"max_position_embeddings": 32, "rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
        "rope_theta": 10000.0}},
}  # fmt: skip


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


@pytest.mark.parametrize("name", ["gqa", "yarn"])
def test_greedy_generation_equals_hugging_face(name):
    hf = tiny(seed=5, **VARIANTS[name])
    model = from_hf(hf)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    expected = hf_greedy(hf, prompt, 20)
    assert torch.equal(our_greedy(model, prompt, 20), expected)


def test_hidden_states_of_qwen3_model():
    hf = tiny(arch="Qwen3Model", seed=2)
    model = from_hf(hf)
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).last_hidden_state
        assert max_diff(model(ids, mask=mask), expected, mask) < TOL


def test_the_qk_norm_is_converted_and_matters():
    hf = tiny(seed=3, rms_norm_eps=1e-3)
    model = from_hf(hf)
    attn = model.attn_layers.layers[0].branch
    assert attn.config.qk_rmsnorm and attn.config.qk_rmsnorm_eps == 1e-3
    gain = hf.model.layers[0].self_attn.k_norm.weight
    assert torch.equal(attn.qk_rmsnorm.k_weight, gain.expand(2, 1, 8))
    ids, _ = padded_batch()
    with torch.no_grad():
        attn.qk_rmsnorm.k_weight.fill_(1.0)
        assert max_diff(model(ids), hf(ids).logits) > 100 * TOL


def test_from_hf_dir_equals_from_hf(tmp_path):
    hf = tiny(seed=7)
    hf.save_pretrained(tmp_path)
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))
    assert supported_architectures()["Qwen3ForCausalLM"] == "lm"
    assert supported_architectures()["Qwen3Model"] == "hidden"


@pytest.mark.parametrize("first", [0, 1])
def test_sliding_window_layers_match(first):
    """use_sliding_window with max_window_layers: the layers from `first` on see 4 keys (the
    padded batch and the decode run past the window); the windows are per layer."""
    hf = tiny(seed=9, use_sliding_window=True, sliding_window=4, max_window_layers=first)
    model = from_hf(hf)
    windows = [b.branch.config.window_of_layer(i) for i, b in
               enumerate(model.attn_layers.layers[0::2])]  # fmt: skip
    assert windows == [None if i < first else 4 for i in range(2)]
    ids, mask = padded_batch()
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).logits
        assert max_diff(model(ids, mask=mask), expected, mask) < TOL
    assert torch.equal(our_greedy(model, prompt, 20), hf_greedy(hf, prompt, 20))


def test_bad_layer_types_raise_naming_the_option(tmp_path):
    hf = tiny(seed=7)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["layer_types"] = ["full_attention", "chunked_attention"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedHFModel, match="option layer_types='chunked_attention'"):
        from_hf_dir(tmp_path)


def test_qk_rmsnorm_is_the_float64_formula():
    """RMSNorm of each head: x / sqrt(mean(x^2) + eps) * gain (per head row), in float64."""
    torch.manual_seed(0)
    norm = QKRMSNorm(heads=4, kv_heads=2, dim_head=8, eps=1e-3)
    with torch.no_grad():
        norm.q_weight.normal_()
        norm.k_weight.normal_()
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8) * 0.05  # small keys: eps matters
    got_q, got_k = norm(q, k)

    def reference(t, gain):
        t = t.double()
        return t / (t.pow(2).mean(-1, keepdim=True) + 1e-3).sqrt() * gain.double()

    assert (got_q.double() - reference(q, norm.q_weight)).abs().max() < 1e-5
    assert (got_k.double() - reference(k, norm.k_weight)).abs().max() < 1e-5
    plain = QKRMSNorm(4, 2, 8)  # eps 0: x-transformers 2.x (l2-normalise times sqrt(d))
    expected = torch.nn.functional.normalize(k.double(), dim=-1) * 8**0.5
    assert (plain(q, k)[1].double() - expected).abs().max() < 1e-5


def test_qk_rmsnorm_keywords_and_decoding():
    """Cached decoding equals the full forward; the keyword errors name the options."""
    torch.manual_seed(1)
    model = TransformerWrapper(num_tokens=40, max_seq_len=32, attn_layers=Decoder(
        dim=32, depth=2, heads=4, attn_kv_heads=2, attn_dim_head=8, rotary_pos_emb=True,
        attn_qk_rmsnorm=True, attn_qk_rmsnorm_eps=1e-6)).eval()  # fmt: skip
    assert model.attn_layers.layers[0].branch.path == "fused"
    ids = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        full = model(ids)
        _, cache = model(ids[:, :6], return_intermediates=True)
        for t in range(6, 10):
            logits, cache = model(ids[:, : t + 1], cache=cache, return_intermediates=True)
            assert (logits[:, -1] - full[:, t]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="attn_qk_rmsnorm_eps was set but attn_qk_rmsnorm=False"):
        Decoder(dim=16, depth=1, heads=2, attn_qk_rmsnorm_eps=1e-6)
    with pytest.raises(ValueError, match=r"attn_qk_norm .* and attn_qk_rmsnorm .* choose one"):
        Decoder(dim=16, depth=1, heads=2, attn_qk_norm=True, attn_qk_rmsnorm=True)


def test_qk_rmsnorm_has_no_x_transformers_layout_yet():
    from anyformer.convert import to_x_transformers_state_dict

    model = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=Decoder(
        dim=16, depth=1, heads=2, attn_qk_rmsnorm=True))  # fmt: skip
    with pytest.raises(ValueError, match="attn_qk_rmsnorm has no x-transformers checkpoint"):
        to_x_transformers_state_dict(model)
