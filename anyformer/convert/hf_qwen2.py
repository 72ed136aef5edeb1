"""Qwen2 (Hugging Face ``Qwen2ForCausalLM`` / ``Qwen2Model``) -> anyformer.

Qwen2 is Llama-shaped (rotary, RMSNorm, grouped-query attention, SwiGLU) with biases on the
query/key/value projections and none on the output projection (Qwen team 2024,
https://arxiv.org/abs/2407.10671). Sliding-window attention (``use_sliding_window=True``, or any
``layer_types`` entry other than 'full_attention') is not supported and raises naming the option.
"""

from __future__ import annotations

from torch import nn

from .hf_base import HFConfig, HFFamily
from .hf_llama import build_llama_like, load

__all__ = ["FAMILY", "build"]


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Qwen2's structure (random weights)."""
    config.require("use_sliding_window", (False,), False)
    for kind in config.value_or("layer_types", ()):
        if kind != "full_attention":
            raise config.unsupported(
                "layer_types", kind, "only 'full_attention' layers are implemented"
            )
    return build_llama_like(config, head, qkv_bias=True, out_bias=False)


FAMILY = HFFamily(
    name="Qwen2",
    model_types=("qwen2",),
    architectures={"Qwen2ForCausalLM": "lm", "Qwen2Model": "hidden"},
    build=build,
    load=load,
    prefixes=("model.", ""),
    probe="embed_tokens.weight",
    ignore=("*rotary_emb.inv_freq",),
)
