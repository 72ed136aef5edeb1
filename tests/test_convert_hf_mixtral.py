"""Mixtral: a tiny Hugging Face MixtralForCausalLM with random weights, converted, gives the same
logits on a padded batch and the same 20 greedy tokens with the cache (top-2 of 4 experts, top-1
of 3, a sliding window, tied MHA); both checkpoint layouts (transformers 5's fused experts and the
original per-expert w1/w2/w3) load the same model; the training loss of one layer with the
router's aux loss equals Hugging Face's; options that cannot be reproduced raise naming them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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

from anyformer import AutoregressiveWrapper, TransformerWrapper
from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir, supported_architectures
from anyformer.convert.hf import _convert
from anyformer.nn.moe import MixtureOfExperts

torch.set_num_threads(1)


def tiny(seed=0, arch="MixtralForCausalLM", **overrides):
    kwargs = {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 24}
    config = transformers.MixtralConfig(**_llama_kwargs({**kwargs, **overrides}))
    return _seeded(getattr(transformers, arch), config, seed)


VARIANTS = {
    "top2-of-4": {},
    "top1-of-3": {"num_local_experts": 3, "num_experts_per_tok": 1},
    "window-4": {"sliding_window": 4},
    "mha-tied": {"num_key_value_heads": 4, "tie_word_embeddings": True},
}

LENS = (12, 7, 10)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_on_a_padded_batch(name):
    hf = tiny(**VARIANTS[name])
    model = from_hf(hf)
    assert isinstance(model, TransformerWrapper)
    moe = model.attn_layers.layers[1].branch
    assert isinstance(moe, MixtureOfExperts) and moe.renormalize
    assert (moe.num_experts, moe.top_k) == (
        hf.config.num_local_experts,
        hf.config.num_experts_per_tok,
    )
    ids, mask = padded_batch(LENS)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).logits
        got = model(ids, mask=mask)
    assert got.shape == (3, 12, VOCAB)
    assert max_diff(got, expected, mask) < TOL


@pytest.mark.parametrize("name", ["top2-of-4", "window-4"])
def test_greedy_generation_equals_hugging_face(name):
    hf = tiny(seed=5, **VARIANTS[name])
    model = from_hf(hf)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    expected = hf_greedy(hf, prompt, 20)
    assert torch.equal(our_greedy(model, prompt, 20), expected)


def test_hidden_states_of_mixtral_model():
    hf = tiny(arch="MixtralModel", seed=2)
    model = from_hf(hf)
    ids, mask = padded_batch(LENS)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).last_hidden_state
        assert max_diff(model(ids, mask=mask), expected, mask) < TOL


def _per_expert_checkpoint(state: dict) -> dict:
    """transformers 5's fused expert tensors rewritten in the original Mixtral layout."""
    out = {}
    for key, value in state.items():
        if ".mlp.experts.gate_up_proj" in key:
            head = key.split(".mlp.")[0] + ".block_sparse_moe.experts."
            gate, up = value.chunk(2, dim=1)
            for j in range(value.shape[0]):
                out[f"{head}{j}.w1.weight"], out[f"{head}{j}.w3.weight"] = gate[j], up[j]
        elif ".mlp.experts.down_proj" in key:
            head = key.split(".mlp.")[0] + ".block_sparse_moe.experts."
            for j in range(value.shape[0]):
                out[f"{head}{j}.w2.weight"] = value[j]
        else:
            out[key.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = value
    return out


def test_both_checkpoint_layouts_and_a_saved_folder_give_the_same_model(tmp_path):
    hf = tiny(seed=7)
    fused = from_hf(hf)
    state = _per_expert_checkpoint(hf.state_dict())
    assert any(".block_sparse_moe.experts.3.w2.weight" in k for k in state)
    config = hf.config.to_dict()
    legacy = _convert(config, "MixtralForCausalLM", state, "test", torch.float32, "cpu")
    same_parameters(legacy, fused)
    hf.save_pretrained(tmp_path)
    same_parameters(from_hf_dir(tmp_path), fused)
    assert supported_architectures()["MixtralForCausalLM"] == "lm"
    assert supported_architectures()["MixtralModel"] == "hidden"


def test_one_layers_training_loss_with_the_aux_loss_equals_hugging_faces():
    """router_aux_loss_coef * top_k is anyformer's load-balancing weight (one layer: equal)."""
    hf = tiny(seed=3, num_hidden_layers=1, output_router_logits=True, router_aux_loss_coef=0.3)
    model = from_hf(hf)
    moe = model.attn_layers.layers[1].branch
    assert moe.loss_weights == (pytest.approx(0.6), 0.0)
    x = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = hf(x[:, :-1], output_router_logits=True)
        ce = F.cross_entropy(out.logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        expected = ce + 0.3 * out.aux_loss
        got = AutoregressiveWrapper(model.train())(x)
    assert out.aux_loss.item() > 1.0  # the aux term is not negligible here
    assert abs(got.item() - expected.item()) < 1e-5


def test_without_output_router_logits_no_aux_loss_is_added():
    model = from_hf(tiny())
    assert model.attn_layers.layers[1].branch.loss_weights == (0.0, 0.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_act": "gelu"}, "Mixtral config: option hidden_act='gelu'"),
        ({"router_jitter_noise": 0.1}, "Mixtral config: option router_jitter_noise=0.1"),
    ],
)
def test_unsupported_options_raise_naming_them(overrides, message):
    config = tiny().config.to_dict()
    config.update(overrides)
    with pytest.raises(UnsupportedHFModel, match=message):
        _convert(config, "MixtralForCausalLM", tiny().state_dict(), "test", torch.float32, "cpu")
