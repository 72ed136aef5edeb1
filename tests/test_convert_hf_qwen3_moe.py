"""Qwen3-MoE: a tiny Hugging Face Qwen3MoeForCausalLM with random weights, converted, gives the
same logits on a padded batch (top-2 of 4 experts with and without norm_topk_prob, attention
biases) and the same 20 greedy tokens with the cache; the original per-expert checkpoint layout
loads the same model; dense layers among the sparse ones are refused naming the option."""

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

from anyformer.convert import UnsupportedHFModel, from_hf, supported_architectures
from anyformer.convert.hf import _convert

torch.set_num_threads(1)


def tiny(seed=0, arch="Qwen3MoeForCausalLM", **overrides):
    kwargs = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 20,
              "head_dim": 8, "norm_topk_prob": True}  # fmt: skip
    config = transformers.Qwen3MoeConfig(**_llama_kwargs({**kwargs, **overrides}))
    return _seeded(getattr(transformers, arch), config, seed)


VARIANTS = {
    "renormalized": {},
    "not-renormalized": {"norm_topk_prob": False},
    "bias-top1": {"attention_bias": True, "num_experts_per_tok": 1},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_on_a_padded_batch(name):
    hf = tiny(**VARIANTS[name])
    model = from_hf(hf)
    moe = model.attn_layers.layers[1].branch
    assert moe.renormalize == hf.config.norm_topk_prob
    assert moe.experts[0].proj_out.weight.shape == (32, 20)
    ids, mask = padded_batch((12, 7, 10))
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).logits
        got = model(ids, mask=mask)
    assert max_diff(got, expected, mask) < TOL


def test_greedy_generation_equals_hugging_face():
    hf = tiny(seed=5)
    model = from_hf(hf)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    assert torch.equal(our_greedy(model, prompt, 20), hf_greedy(hf, prompt, 20))


def test_the_per_expert_layout_loads_the_same_model():
    hf = tiny(seed=7)
    state = {}
    for key, value in hf.state_dict().items():
        head = key.split(".mlp.")[0] + ".mlp.experts."
        if key.endswith("mlp.experts.gate_up_proj"):
            gate, up = value.chunk(2, dim=1)
            for j in range(value.shape[0]):
                state[f"{head}{j}.gate_proj.weight"], state[f"{head}{j}.up_proj.weight"] = (
                    gate[j],
                    up[j],
                )
        elif key.endswith("mlp.experts.down_proj"):
            for j in range(value.shape[0]):
                state[f"{head}{j}.down_proj.weight"] = value[j]
        else:
            state[key] = value
    config = hf.config.to_dict()
    legacy = _convert(config, "Qwen3MoeForCausalLM", state, "test", torch.float32, "cpu")
    same_parameters(legacy, from_hf(hf))
    assert supported_architectures()["Qwen3MoeForCausalLM"] == "lm"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mlp_only_layers": [1]}, "Qwen3-MoE config: option mlp_only_layers=\\[1\\]"),
        ({"decoder_sparse_step": 2}, "Qwen3-MoE config: option decoder_sparse_step=2"),
    ],
)
def test_dense_layers_are_refused_naming_the_option(overrides, message):
    config = tiny().config.to_dict()
    config.update(overrides)
    with pytest.raises(UnsupportedHFModel, match=message):
        _convert(config, "Qwen3MoeForCausalLM", tiny().state_dict(), "test", torch.float32, "cpu")
