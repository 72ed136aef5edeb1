"""Mistral (Hugging Face ``MistralForCausalLM`` / ``MistralModel``) -> anyformer.

Mistral is Llama-shaped (rotary, RMSNorm, grouped-query attention, SwiGLU, no biases) with
sliding-window attention on every layer: the query at position i sees the ``sliding_window``
keys j with ``i - W < j <= i`` (Jiang et al. 2023, https://arxiv.org/abs/2310.06825), anyformer's
``attn_sliding_window``. ``sliding_window: null`` (Mistral v0.2+) is full causal attention. Its
``head_dim`` may differ from ``hidden_size / num_attention_heads``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .hf_base import HFConfig
from .hf_llama import build_llama_like, llama_like_family, load

__all__ = ["FAMILY", "build", "window_keywords"]


def window_keywords(config: HFConfig) -> dict[str, Any]:
    """``attn_sliding_window`` for a config's ``sliding_window`` (every layer; None: full)."""
    window = config.data.get("sliding_window")
    if window is None:
        return {}
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise config.unsupported("sliding_window", window, "expected an int >= 1 or null")
    return {"attn_sliding_window": window}


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Mistral's structure (random weights)."""
    return build_llama_like(config, head, qkv_bias=False, out_bias=False, **window_keywords(config))


FAMILY = llama_like_family("Mistral", "mistral", "Mistral", build, load)
