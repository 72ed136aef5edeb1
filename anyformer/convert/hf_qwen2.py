"""Qwen2 (Hugging Face ``Qwen2ForCausalLM`` / ``Qwen2Model``) -> anyformer.

Qwen2 is Llama-shaped (rotary, RMSNorm, grouped-query attention, SwiGLU) with biases on the
query/key/value projections and none on the output projection (Qwen team 2024,
https://arxiv.org/abs/2407.10671). Sliding-window layers get anyformer's per-layer
``attn_sliding_window`` (the query at i sees the keys j with ``i - W < j <= i``): those that
``layer_types`` marks 'sliding_attention', or, in configs without ``layer_types``, as
transformers derives them from ``use_sliding_window=True``: the layers from
``max_window_layers`` on (the first ``max_window_layers`` layers stay full).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .hf_base import HFConfig
from .hf_llama import build_llama_like, llama_like_family, load

__all__ = ["FAMILY", "build", "window_keywords"]


def window_keywords(config: HFConfig) -> dict[str, Any]:
    """Per-layer ``attn_sliding_window`` from ``layer_types`` ('sliding_attention' layers get
    ``sliding_window``, 'full_attention' ones None), or, in configs without ``layer_types``,
    from ``use_sliding_window`` and ``max_window_layers`` as transformers derives them; {} when
    every layer is full."""
    depth = config.get("num_hidden_layers")
    window = (
        config.data.get("sliding_window") if config.value_or("use_sliding_window", False) else None
    )
    types = config.data.get("layer_types")
    if types is None:
        first = config.value_or("max_window_layers", depth)
        slides = window is not None
        types = [
            "sliding_attention" if slides and i >= first else "full_attention" for i in range(depth)
        ]
    if not isinstance(types, list) or len(types) != depth:
        raise config.unsupported("layer_types", types, f"expected a list of {depth} layer kinds")
    windows: list[int | None] = []
    for kind in types:
        if kind == "full_attention":
            windows.append(None)
        elif kind == "sliding_attention" and isinstance(window, int) and window >= 1:
            windows.append(window)
        else:
            why = "'sliding_attention' needs use_sliding_window=True and sliding_window >= 1"
            raise config.unsupported("layer_types", kind, why)
    if all(w is None for w in windows):
        return {}
    return {"attn_sliding_window": tuple(windows)}


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Qwen2's structure (random weights)."""
    return build_llama_like(config, head, qkv_bias=True, out_bias=False, **window_keywords(config))


FAMILY = llama_like_family("Qwen2", "qwen2", "Qwen2", build, load)
