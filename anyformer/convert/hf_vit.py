"""ViT (Hugging Face ``ViTModel``, ``ViTForImageClassification``) -> anyformer.

The model (Dosovitskiy et al. 2020, https://arxiv.org/abs/2010.11929): a stride-p convolution
cuts the image into patches and projects them (a linear over each flattened patch), a learned
CLS token is prepended, learned positions (the CLS token's included) are added, pre-norm blocks
with LayerNorms (bias, eps 1e-12), biased attention projections and an exact-GELU feedforward
run, a final LayerNorm closes the stack; the classifier reads the CLS token's output.

anyformer's equivalent is a :class:`~anyformer.ViTransformerWrapper` with
``use_cls_token=True, patch_norm=False`` (no dual patch norm) and an ``Encoder(norm_bias=True,
attn_qkv_bias=True, attn_out_bias=True, ...)``. ``model(img)`` gives the class logits
(``ViTForImageClassification``) or the CLS token's output (``ViTModel``);
``model(img, return_embeddings=True)`` gives ``last_hidden_state`` (CLS first). The
convolution weight (out, c, p, p) becomes the linear's (out, p * p * c): anyformer flattens a
patch in (row, column, channel) order. ``ViTModel``'s pooler (dense + tanh on the CLS output)
is not part of the last hidden state and is dropped, as for BERT. Checkpoints in the
transformers 4 layout (``encoder.layer.N.attention.attention.query``) and the transformers 5
one (``layers.N.attention.q_proj``) both load.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .hf_base import HFConfig, HFFamily, WeightLoader, check_divisible, hf_activation
from .hf_table import TensorRule, load_rules

__all__ = ["FAMILY", "build", "load", "vit_rules"]

_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")

# per layer: (transformers 5 name, transformers 4 name) of each tensor group
_LAYOUT = {
    "q": ("attention.q_proj", "attention.attention.query"),
    "k": ("attention.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "attention.attention.value"),
    "o": ("attention.o_proj", "attention.output.dense"),
    "up": ("mlp.fc1", "intermediate.dense"),
    "down": ("mlp.fc2", "output.dense"),
    "layers": ("layers", "encoder.layer"),
}


def _square(config: HFConfig, key: str) -> int:
    value = config.get(key)
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise config.unsupported(key, value, "anyformer's ViT takes square images and patches")
    return value


def _num_labels(config: HFConfig) -> int:
    labels = config.data.get("id2label")
    count = len(labels) if isinstance(labels, dict) else config.value_or("num_labels", 2)
    if count < 1:
        raise config.unsupported("num_labels", count, "a classifier needs at least one class")
    return count


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer ViTransformerWrapper with ViT's structure (random weights)."""
    from ..stack import Encoder
    from ..wrappers import ViTransformerWrapper

    config.require("hidden_act", _ACTIVATIONS, "gelu")
    stack: dict[str, Any] = dict(
        dim=config.get("hidden_size"),
        depth=config.get("num_hidden_layers"),
        heads=config.get("num_attention_heads"),
        attn_dim_head=check_divisible(config, "hidden_size", "num_attention_heads"),
        attn_qkv_bias=bool(config.value_or("qkv_bias", True)),
        attn_out_bias=True,
        attn_dropout=float(config.value_or("attention_probs_dropout_prob", 0.0)),
        norm_bias=True,
        norm_eps=float(config.value_or("layer_norm_eps", 1e-12)),
        ff_inner_dim=config.get("intermediate_size"),
        **hf_activation(config, "hidden_act", _ACTIVATIONS),
    )
    return ViTransformerWrapper(
        image_size=_square(config, "image_size"),
        patch_size=_square(config, "patch_size"),
        channels=config.value_or("num_channels", 3),
        num_classes=_num_labels(config) if head == "classes" else None,
        use_cls_token=True,
        patch_norm=False,
        emb_dropout=float(config.value_or("hidden_dropout_prob", 0.0)),
        attn_layers=Encoder(**stack),
    )


def _linear(ours: str, hf: str, bias: bool = True) -> list[TensorRule]:
    rules = [TensorRule(f"{ours}.weight", (f"{hf}.weight",))]
    return [*rules, TensorRule(f"{ours}.bias", (f"{hf}.bias",))] if bias else rules


def _layer_rules(config: HFConfig, i: int, hf: str, legacy: bool) -> list[TensorRule]:
    """Rules of layer ``i`` (anyformer blocks 2i: attention, 2i + 1: feedforward)."""
    name = {key: names[int(legacy)] for key, names in _LAYOUT.items()}
    p = f"{hf}{name['layers']}.{i}."
    attn, ff = f"attn_layers.layers.{2 * i}.", f"attn_layers.layers.{2 * i + 1}."
    qkv = tuple(p + name[x] for x in "qkv")
    rows = (config.get("hidden_size"),) * 3
    rules = [TensorRule(attn + "branch.qkv.to_qkv.weight", tuple(n + ".weight" for n in qkv), rows)]
    if config.value_or("qkv_bias", True):
        rules.append(
            TensorRule(attn + "branch.qkv.to_qkv.bias", tuple(n + ".bias" for n in qkv), rows)
        )
    rules += _linear(attn + "branch.to_out", p + name["o"])
    rules += _linear(attn + "pre_norm", p + "layernorm_before")
    rules += _linear(ff + "pre_norm", p + "layernorm_after")
    rules += _linear(ff + "branch.proj_in", p + name["up"])
    return rules + _linear(ff + "branch.proj_out", p + name["down"])


def vit_rules(config: HFConfig, head: str, prefix: str, legacy: bool) -> list[TensorRule]:
    """The full name table of a ViT checkpoint: Hugging Face names with the base model's
    ``prefix`` ('vit.' in ViTForImageClassification); ``legacy``: transformers 4 names."""
    e = f"{prefix}embeddings."
    channels, patch = config.value_or("num_channels", 3), _square(config, "patch_size")
    rules = [
        TensorRule("cls_token", (e + "cls_token",)),
        TensorRule("pos_embedding", (e + "position_embeddings",)),
        TensorRule(
            "patch_to_embedding.1.weight",
            (e + "patch_embeddings.projection.weight",),
            patch=(channels, patch),
        ),
        TensorRule("patch_to_embedding.1.bias", (e + "patch_embeddings.projection.bias",)),
    ]
    for i in range(config.get("num_hidden_layers")):
        rules += _layer_rules(config, i, prefix, legacy)
    rules += _linear("attn_layers.final_norm", f"{prefix}layernorm")
    return rules + (_linear("mlp_head", "classifier") if head == "classes" else [])


def load(loader: WeightLoader, config: HFConfig, model: nn.Module, head: str) -> None:
    """Copy a ViT checkpoint's tensors into ``model`` (built by ``build``)."""
    prefix, loader.prefix = loader.prefix, ""  # the rules carry full names (classifier: none)
    legacy = loader.has(f"{prefix}encoder.layer.0.layernorm_before.weight")
    load_rules(loader, model, vit_rules(config, head, prefix, legacy))


FAMILY = HFFamily(
    name="ViT",
    model_types=("vit",),
    architectures={"ViTModel": "hidden", "ViTForImageClassification": "classes"},
    build=build,
    load=load,
    prefixes=("vit.", ""),
    probe="embeddings.cls_token",
    # ViTModel's pooler is not part of the last hidden state (dropped, as for BERT)
    ignore=("pooler.*", "vit.pooler.*"),
)
