"""ViT: tiny Hugging Face ViT models with random weights, converted, give the same last hidden
state (CLS token first) and class logits; transformers 4 and 5 checkpoint layouts load; the CLS
pooling and plain patch embedding options are checked by hand; unsupported options raise
naming them."""

from __future__ import annotations

import json
import re

import pytest
import torch
from hf_models import TOL, max_diff, same_parameters

from anyformer import Encoder, ViTransformerWrapper
from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir
from anyformer.convert.hf_base import HFConfig
from anyformer.convert.hf_table import TensorRule
from anyformer.convert.hf_vit import vit_rules

transformers = pytest.importorskip("transformers")


def tiny_vit(seed=0, arch="ViTForImageClassification", **overrides):
    kwargs = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        image_size=16, patch_size=4, num_channels=3, num_labels=5, initializer_range=0.1,
    )  # fmt: skip
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(transformers.ViTConfig(**kwargs)).eval()
    with torch.no_grad():  # HF initialises the CLS token and positions small: make them count
        embeddings = model.base_model.embeddings
        embeddings.cls_token.normal_()
        embeddings.position_embeddings.normal_()
    return model


def _images(seed=1, batch=3, channels=3, size=16):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "overrides",
    [{}, {"qkv_bias": False, "hidden_act": "gelu_new", "layer_norm_eps": 1e-6, "num_channels": 2}],
    ids=["default", "no-qkv-bias-tanh-gelu-eps-2-channels"],
)
def test_logits_and_last_hidden_state_match(overrides):
    hf = tiny_vit(**overrides)
    model = from_hf(hf)
    assert isinstance(model, ViTransformerWrapper)
    img = _images(channels=hf.config.num_channels)
    with torch.no_grad():
        out = hf(pixel_values=img, output_hidden_states=True)
        hidden = hf.vit.layernorm(out.hidden_states[-1])
        logits, embed = model(img, return_logits_and_embeddings=True)
    assert embed.shape == (3, 17, 32)  # CLS + 16 patches
    assert max_diff(embed, hidden) < TOL
    assert logits.shape == (3, 5)
    assert max_diff(logits, out.logits) < TOL


def test_vit_model_last_hidden_state_and_pooled_cls():
    hf = tiny_vit(seed=2, arch="ViTModel", image_size=24, patch_size=8)
    model = from_hf(hf)
    img = _images(seed=3, size=24)
    with torch.no_grad():
        expected = hf(pixel_values=img).last_hidden_state
        got = model(img, return_embeddings=True)
        pooled = model(img)
    assert got.shape == (3, 10, 32)
    assert max_diff(got, expected) < TOL
    assert torch.equal(pooled, got[:, 0])  # without a head: the CLS token's output


def test_from_hf_dir_equals_from_hf(tmp_path):
    hf = tiny_vit(seed=4)
    hf.save_pretrained(tmp_path)
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))


def test_save_pretrained_round_trip(tmp_path):
    """The converted model is a plain anyformer model: saved and reloaded, the same logits."""
    model = from_hf(tiny_vit(seed=10))
    model.save_pretrained(tmp_path)
    loaded = ViTransformerWrapper.from_pretrained(tmp_path).eval()
    assert loaded.config.use_cls_token and not loaded.config.patch_norm
    img = _images(seed=11)
    with torch.no_grad():
        assert torch.equal(loaded(img), model(img))


_V4_NAMES = [
    (r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."),
    (r"attention\.([qkv])_proj", None),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"mlp\.fc1", "intermediate.dense"),
    (r"mlp\.fc2", "output.dense"),
]
_QKV = {"q": "query", "k": "key", "v": "value"}


def _v4_name(name):
    """A transformers 5 ViT key in the transformers 4 layout (as on the Hugging Face hub)."""
    for pattern, replacement in _V4_NAMES:
        if replacement is None:
            name = re.sub(pattern, lambda m: f"attention.attention.{_QKV[m.group(1)]}", name)
        else:
            name = re.sub(pattern, replacement, name)
    return name


def test_transformers4_layout_loads(tmp_path):
    """Hub checkpoints use the transformers 4 names (encoder.layer.N.attention.attention.query,
    intermediate.dense, ...) and keep the pooler: both load (the pooler is dropped)."""
    hf = tiny_vit(seed=5, arch="ViTModel")
    hf.save_pretrained(tmp_path)
    state = {_v4_name(k): v for k, v in hf.state_dict().items()}
    assert "encoder.layer.1.attention.attention.value.bias" in state
    assert "pooler.dense.weight" in state
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))


def test_patch_embedding_flatten_order_by_hand():
    """The converted patch projection equals Hugging Face's convolution on each patch
    (float64, by hand): weight[o, c, i, j] * img[c, pi + i, pj + j] summed, plus the bias."""
    hf = tiny_vit(seed=6, num_channels=2)
    model = from_hf(hf).double()
    img = _images(seed=7, batch=1, channels=2).double()
    conv = hf.vit.embeddings.patch_embeddings.projection
    w, b = conv.weight.detach().double(), conv.bias.detach().double()
    expected = torch.stack(
        [
            torch.einsum("ocij,cij->o", w, img[0, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]) + b
            for r in range(4)
            for c in range(4)
        ]
    )
    got = model.patch_to_embedding(model.patchify(img))[0]
    assert torch.allclose(got, expected, atol=1e-12)


def test_cls_token_option_by_hand():
    """use_cls_token: the CLS token takes position 0, the patches 1..n; the output is the CLS
    token's; patch_norm=False leaves a plain linear."""
    torch.manual_seed(0)
    model = ViTransformerWrapper(
        image_size=8, patch_size=4, channels=1, use_cls_token=True, patch_norm=False,
        attn_layers=Encoder(dim=8, depth=1, heads=2, attn_dim_head=4),
    ).eval()  # fmt: skip
    assert model.pos_embedding.shape == (1, 5, 8)
    img = torch.randn(2, 1, 8, 8)
    linear = model.patch_to_embedding[1]
    x = torch.cat([model.cls_token.expand(2, 1, 8), linear(model.patchify(img))], dim=1)
    with torch.no_grad():
        expected = model.attn_layers(x + model.pos_embedding)
        assert torch.equal(model(img, return_embeddings=True), expected)
        assert torch.equal(model(img), expected[:, 0])
    names = {n for n, _ in model.named_parameters()}
    assert {"cls_token", "patch_to_embedding.1.weight"} <= names
    assert not any(n.startswith(("patch_to_embedding.0", "patch_to_embedding.2")) for n in names)


def test_name_table_inverts():
    hf = tiny_vit(seed=8)
    model, state = from_hf(hf), hf.state_dict()
    ours = model.state_dict()
    rules = vit_rules(HFConfig(hf.config.to_dict(), "ViT"), "classes", "vit.", legacy=False)
    for rule in rules:
        assert isinstance(rule, TensorRule)
        assert torch.equal(ours[rule.ours], rule.to_ours([state[n] for n in rule.hf]))
        for name, tensor in rule.to_hf(ours[rule.ours]).items():
            assert torch.equal(tensor, state[name]), name
    assert {n for r in rules for n in r.hf} == set(state)
    assert {r.ours for r in rules} == set(ours)


def _folder_with(tmp_path, **changes):
    tiny_vit().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"hidden_act": "relu"}, "hidden_act='relu'"),
        ({"image_size": [16, 12]}, r"image_size=\[16, 12\]"),
        ({"patch_size": [4, 2]}, r"patch_size=\[4, 2\]"),
        ({"num_attention_heads": 5}, "num_attention_heads=5"),
    ],
)
def test_unsupported_options_raise_naming_them(tmp_path, changes, option):
    folder = _folder_with(tmp_path, **changes)
    with pytest.raises(UnsupportedHFModel, match=f"ViT config: option {option}"):
        from_hf_dir(folder)


def test_mask_token_checkpoints_are_refused(tmp_path):
    """ViTModel(use_mask_token=True) stores a mask token anyformer has no place for."""
    hf = tiny_vit(seed=9, arch="ViTModel")
    hf.save_pretrained(tmp_path)
    state = dict(hf.state_dict(), **{"embeddings.mask_token": torch.zeros(1, 1, 32)})
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsupportedHFModel, match=r"embeddings\.mask_token"):
        from_hf_dir(tmp_path)


def test_other_heads_are_refused(tmp_path):
    folder = _folder_with(tmp_path, architectures=["ViTForMaskedImageModeling"])
    with pytest.raises(UnsupportedHFModel, match="'ViTForMaskedImageModeling' is not supported"):
        from_hf_dir(folder)
