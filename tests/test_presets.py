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
