"""anyformer -> Hugging Face ViT (``ViTForImageClassification`` / ``ViTModel``; the inverse of
:mod:`anyformer.convert.hf_vit`).

A :class:`~anyformer.ViTransformerWrapper` built as ViT (``use_cls_token=True``,
``patch_norm=False``, an ``Encoder`` with LayerNorms with biases, biased attention projections,
a GELU / tanh-GELU / SiLU feedforward with biases) is written with the import side's own name
table (:func:`anyformer.convert.hf_vit.vit_rules`, read backwards, transformers 5 names): the
linear patch embedding goes back to the stride-p convolution's (out, c, p, p) layout. A model
with ``num_classes`` becomes ``ViTForImageClassification`` (its ``mlp_head`` the
``classifier``), one without ``ViTModel``. ``ViTModel``'s pooler (dense + tanh on the CLS
output; anyformer has none) is not written: transformers initialises it at random, which
changes ``pooler_output`` only, never ``last_hidden_state``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from . import hf_vit
from .hf_base import HFConfig
from .hf_export_base import HFExporter, configs

__all__ = ["VIT"]


def _activation(ff: Any) -> str:
    return "silu" if ff.swish else "gelu_new" if ff.gelu_tanh else "gelu"


def _config(net: nn.Module, head: str) -> dict[str, Any]:
    wrapper, stack = configs(net)
    ff, attention = stack.feedforward, stack.attention
    config: dict[str, Any] = {
        "model_type": "vit",
        "architectures": ["ViTForImageClassification" if head == "classes" else "ViTModel"],
        "hidden_size": stack.dim,
        "num_hidden_layers": stack.depth,
        "num_attention_heads": stack.heads,
        "intermediate_size": ff.inner_dim or int(stack.dim * ff.mult),
        "hidden_act": _activation(ff),
        "hidden_dropout_prob": wrapper.emb_dropout,
        "attention_probs_dropout_prob": attention.dropout,
        "layer_norm_eps": stack.norm.eps,
        "image_size": wrapper.image_size,
        "patch_size": wrapper.patch_size,
        "num_channels": wrapper.channels,
        "qkv_bias": attention.qkv_bias,
    }
    if head == "classes":
        classes = wrapper.num_classes
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(classes)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(classes)}
    return config


def _weights(net: nn.Module, head: str) -> dict[str, Tensor]:
    config = HFConfig(_config(net, head), "ViT")
    prefix = "vit." if head == "classes" else ""
    out: dict[str, Tensor] = {}
    for rule in hf_vit.vit_rules(config, head, prefix, legacy=False):
        out.update(rule.to_hf(net.get_parameter(rule.ours).detach()))
    return out


VIT = HFExporter(
    family=hf_vit.FAMILY,
    architectures={"classes": "ViTForImageClassification", "hidden": "ViTModel"},
    config=_config,
    weights=_weights,
    model_class="ViTransformerWrapper",
)
