"""anyformer ViTransformerWrapper -> Hugging Face ViT (``ViTForImageClassification`` /
``ViTModel``): the folder loads in ``transformers`` with the same class logits and last hidden
state and reads back bitwise; options ViT lacks are refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import TOL, max_diff, same_parameters

from anyformer import Encoder, ViTransformerWrapper
from anyformer.convert import from_hf_dir, to_hf, to_hf_dir

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)


def _vit(classes: int | None = 5, channels: int = 3, **overrides) -> ViTransformerWrapper:
    stack = dict(
        dim=32, depth=2, heads=4, attn_dim_head=8, attn_qkv_bias=True, attn_out_bias=True,
        norm_bias=True, norm_eps=1e-12, ff_inner_dim=48,
    )  # fmt: skip
    stack.update(overrides)
    return ViTransformerWrapper(
        image_size=16, patch_size=4, channels=channels, num_classes=classes,
        use_cls_token=True, patch_norm=False, attn_layers=Encoder(**stack),
    ).eval()  # fmt: skip


MODELS = {
    "classifier": (lambda: _vit(), "ViTForImageClassification"),
    "no-qkv-bias-tanh-gelu-2-channels": (
        lambda: _vit(channels=2, attn_qkv_bias=False, ff_gelu_tanh=True, norm_eps=1e-6),
        "ViTForImageClassification",
    ),
    "model": (lambda: _vit(classes=None), "ViTModel"),
}


def _random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    return model


def _images(channels: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(3, channels, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(MODELS))
def test_transformers_loads_the_folder_with_the_same_outputs(name, tmp_path):
    build, arch = MODELS[name]
    model = _random(build())
    folder = to_hf_dir(model, tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["architectures"] == [arch]
    auto = transformers.AutoModelForImageClassification if model.config.num_classes else None
    hf = (auto or transformers.AutoModel).from_pretrained(folder).eval()
    assert type(hf).__name__ == arch
    img = _images(model.config.channels)
    with torch.no_grad():
        out = hf(pixel_values=img, output_hidden_states=True)
        logits, embed = model(img, return_logits_and_embeddings=True)
    if auto is None:
        hidden = out.last_hidden_state
    else:
        hidden = hf.vit.layernorm(out.hidden_states[-1])
        assert max_diff(logits, out.logits) < TOL
    assert embed.shape == hidden.shape == (3, 17, 32)  # CLS + 16 patches
    assert max_diff(embed, hidden) < TOL


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_gives_bitwise_equal_parameters(name, tmp_path):
    model = _random(MODELS[name][0]())
    same_parameters(model, from_hf_dir(to_hf_dir(model, tmp_path / "hf")))


REFUSED = {
    "dual-patch-norm": ({"patch_norm": True}, "patch_norm=True (ViT needs False)"),
    "mean-pooling": ({"use_cls_token": False}, "use_cls_token=False (ViT needs True)"),
    "no-out-bias": ({"attn_out_bias": False}, "attn_out_bias=False (ViT needs True)"),
    "registers": ({"num_register_tokens": 2}, "num_register_tokens=2 (ViT needs 0)"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_options_vit_lacks_are_refused_by_name(name, tmp_path):
    overrides, message = REFUSED[name]
    wrapper = {k: v for k, v in overrides.items() if not k.startswith("attn_")}
    stack = {k: v for k, v in overrides.items() if k.startswith("attn_")}
    model = _vit(**stack)
    if wrapper:
        options = {**model.config_dict(), **wrapper}
        model = ViTransformerWrapper.from_config(options)
    pattern = message.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=pattern):
        to_hf_dir(model, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_the_pooler_is_left_to_transformers_and_the_labels_are_written():
    config, state = to_hf(_vit(classes=3))
    assert config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    assert "classifier.weight" in state and not any("pooler" in k for k in state)
    assert state["vit.embeddings.patch_embeddings.projection.weight"].shape == (32, 3, 4, 4)
