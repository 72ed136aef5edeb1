"""Presets: plain dicts of keywords whose models have the published structure and size
(parameter counts from Hugging Face's own modules built on the meta device, or by hand)."""

from __future__ import annotations

import pytest
import torch

from anyformer import Decoder, Encoder, TransformerWrapper, ViTransformerWrapper, presets
from anyformer.convert.hf_base import HFConfig

transformers = pytest.importorskip("transformers")


def _count(module):
    return sum(p.numel() for p in module.parameters())  # tied weights once


def _meta(build):
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize("size", ["small", "medium", "large", "xl"])
def test_gpt2_sizes_match_hugging_face(size):
    ours = _meta(lambda: presets.build("gpt2", size=size))
    dim, depth, heads = {"small": (768, 12, 12), "medium": (1024, 24, 16),
                         "large": (1280, 36, 20), "xl": (1600, 48, 25)}[size]  # fmt: skip
    config = transformers.GPT2Config(n_embd=dim, n_layer=depth, n_head=heads)
    theirs = _meta(lambda: transformers.GPT2LMHeadModel(config))
    assert _count(ours) == _count(theirs)
    if size == "small":
        assert _count(ours) == 124_439_808  # the figure Hugging Face reports for "gpt2"


def test_gpt2_preset_is_what_the_converter_builds_from_the_published_config():
    from anyformer.convert import hf_gpt2

    ours = _meta(lambda: presets.build("gpt2"))
    config = HFConfig(transformers.GPT2Config().to_dict(), "GPT-2")
    converted = _meta(lambda: hf_gpt2.build(config, "lm"))
    assert ours.config_dict() == converted.config_dict()


@pytest.mark.parametrize("size", ["base", "large"])
def test_bert_sizes_match_hugging_face(size):
    ours = _meta(lambda: presets.build("bert", size=size))
    dim, depth, heads = {"base": (768, 12, 12), "large": (1024, 24, 16)}[size]
    config = transformers.BertConfig(
        hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=4 * dim,
    )  # fmt: skip
    theirs = _meta(lambda: transformers.BertModel(config, add_pooling_layer=False))
    assert _count(ours) == _count(theirs)  # the tied output layer adds nothing
    if size == "base":
        assert _count(ours) == 108_891_648


def test_bert_preset_runs_with_token_types():
    model = presets.build("bert", size="tiny", max_seq_len=32).eval()
    ids = torch.randint(0, 30522, (2, 9))
    logits = model(ids, embed_ids={"token_type": torch.zeros_like(ids)})
    assert logits.shape == (2, 9, 30522)
    assert isinstance(model.attn_layers, Encoder) and not model.attn_layers.config.pre_norm


def test_vit_base_parameter_count_by_hand():
    model = _meta(lambda: presets.build("vit"))
    assert isinstance(model, ViTransformerWrapper)
    d, patches, patch_dim = 768, (224 // 16) ** 2, 3 * 16 * 16
    embed = patches * d + patch_dim + (patch_dim * d + d) + d  # positions, norm, linear, norm
    attn = 2 * d + (3 * d * d + 3 * d) + (d * d + d)  # LayerNorm, qkv, out
    ff = 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    head = 2 * d + (d * 1000 + 1000)  # final LayerNorm, classifier
    assert _count(model) == embed + 12 * (attn + ff) + head


def test_build_splits_wrapper_and_stack_keywords():
    kw = presets.gpt2("small", num_tokens=100, max_seq_len=64)
    wrapper, stack = presets.split("gpt2", kw)
    assert wrapper == {"num_tokens": 100, "max_seq_len": 64, "tie_embedding": True,
                       "emb_dropout": 0.1}  # fmt: skip
    assert stack["dim"] == 768 and stack["ff_gelu_tanh"] is True
    model = _meta(lambda: TransformerWrapper(**wrapper, attn_layers=Decoder(**stack)))
    assert model.to_logits.weight is model.token_emb.emb.weight


def test_presets_are_fresh_plain_dicts():
    a = presets.bert()
    a["embed_num_tokens"]["token_type"] = 5
    assert presets.bert()["embed_num_tokens"] == {"token_type": 2}
    assert all(isinstance(v, (int, float, bool, str, dict, type(None))) for v in a.values())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: presets.gpt2("tiny"), r"presets.gpt2: size must be one of \['small'"),
        (lambda: presets.build("t5"), "unknown preset 't5'"),
        (lambda: presets.build("gpt2", sise="small"), "unexpected keyword argument 'sise'"),
    ],
)
def test_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_llama_2_7b_and_70b_parameter_counts():
    seven = _meta(lambda: presets.build("llama"))
    assert _count(seven) == 6_738_415_616  # Llama 2 7B
    config = transformers.LlamaConfig(max_position_embeddings=4096)
    assert _count(seven) == _count(_meta(lambda: transformers.LlamaForCausalLM(config)))
    seventy = _meta(
        lambda: presets.build("llama", dim=8192, depth=80, heads=64, kv_heads=8, ff_inner_dim=28672)
    )
    assert _count(seventy) == 68_976_648_192  # Llama 2 70B (grouped-query attention)


def test_llama_ff_width_rounds_like_the_reference_code():
    assert presets.llama_ff_width(4096) == 11008  # Llama 2 7B
    assert presets.llama_ff_width(5120) == 13824  # Llama 2 13B
    assert presets.llama_ff_width(8192, 4096, 1.3) == 28672  # Llama 2 70B


def test_llama_preset_is_what_the_converter_builds_from_the_published_config():
    from anyformer.convert import hf_llama

    ours = _meta(lambda: presets.build("llama", kv_heads=8, rope_theta=500000.0))
    config = transformers.LlamaConfig(
        max_position_embeddings=4096, rms_norm_eps=1e-5, num_key_value_heads=8,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )  # fmt: skip
    converted = _meta(lambda: hf_llama.build(HFConfig(config.to_dict(), "Llama"), "lm"))
    assert ours.config_dict() == converted.config_dict()


def test_modern_parameter_count_by_hand():
    model = _meta(lambda: presets.build("modern", dim=256, depth=3, heads=4, kv_heads=2))
    d, v, hidden, kv_width = 256, 32000, 704, 2 * 64  # 8/3 * 256 = 682.7 -> multiple of 64
    attn = d + d * d + 2 * d * kv_width + d * d  # RMSNorm, q, k and v (2 heads), out
    ff = d + d * 2 * hidden + hidden * d  # RMSNorm, SwiGLU in, out; no biases
    assert _count(model) == v * d + 3 * (attn + ff) + d  # tied head, final RMSNorm


def test_modern_preset_decodes_with_the_cache_as_without():
    from anyformer import AutoregressiveWrapper

    torch.manual_seed(0)
    net = presets.build("modern", dim=32, depth=2, heads=4, kv_heads=2, num_tokens=50).eval()
    prompt = torch.randint(0, 50, (2, 5))
    wrapper = AutoregressiveWrapper(net)
    cached = wrapper.generate(prompt, 8, temperature=0.0)
    seq = prompt
    for _ in range(8):  # greedy by full recomputation
        seq = torch.cat((seq, net(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(cached, seq[:, 5:])
