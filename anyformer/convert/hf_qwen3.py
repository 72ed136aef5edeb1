"""Qwen3 (Hugging Face ``Qwen3ForCausalLM`` / ``Qwen3Model``) -> anyformer.

Qwen3 is Llama-shaped (rotary, RMSNorm, grouped-query attention, SwiGLU, no biases unless
``attention_bias``) with an RMSNorm on every query and key head before rotary, whose gain (one
per head feature, shared by the heads) and epsilon (``rms_norm_eps``) map to anyformer's
``attn_qk_rmsnorm`` / ``attn_qk_rmsnorm_eps`` (the gain copied into each head's row) (Qwen team
2025, https://arxiv.org/abs/2505.09388). Its ``head_dim`` is independent of ``hidden_size``.
Sliding-window layers (``layer_types`` 'sliding_attention', which transformers sets from
``use_sliding_window`` for the layers from ``max_window_layers`` on) get anyformer's per-layer
``attn_sliding_window`` (the query at i sees the keys j with ``i - W < j <= i``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .hf_base import HFConfig, WeightLoader
from .hf_llama import build_llama_like, llama_like_family
from .hf_llama import load as load_llama
from .hf_qwen2 import window_keywords

__all__ = ["FAMILY", "attention_keywords", "build", "load", "load_qk_gains"]


def attention_keywords(config: HFConfig) -> dict[str, Any]:
    """Qwen3's attention keywords (shared by Qwen3-MoE): biases as ``attention_bias``, an RMSNorm
    on every query and key head, the sliding windows."""
    bias = bool(config.value_or("attention_bias", False))
    return {
        "qkv_bias": bias,
        "out_bias": bias,
        "attn_qk_rmsnorm": True,
        "attn_qk_rmsnorm_eps": float(config.value_or("rms_norm_eps", 1e-6)),
        **window_keywords(config),
    }


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Qwen3's structure (random weights)."""
    return build_llama_like(config, head, **attention_keywords(config))


def load_qk_gains(loader: WeightLoader, model: nn.Module) -> None:
    """Copy every layer's ``self_attn.{q,k}_norm.weight`` (one gain shared by the heads) into
    anyformer's per-head q/k RMSNorm gains."""
    layers = list(model.get_submodule("attn_layers.layers").children())
    for i, block in enumerate(layers[0::2]):
        norm = block.get_submodule("branch.qk_rmsnorm")
        for part in ("q", "k"):
            name = f"layers.{i}.self_attn.{part}_norm.weight"
            param = norm.get_parameter(f"{part}_weight")
            loader.set(param, loader.take(name).expand(param.shape[0], 1, -1), name)


def load(loader: WeightLoader, config: HFConfig, model: nn.Module, head: str) -> None:
    """Copy a Qwen3 checkpoint's tensors into ``model``: Llama's, then the q/k norms' gains."""
    load_llama(loader, config, model, head)
    load_qk_gains(loader, model)


FAMILY = llama_like_family("Qwen3", "qwen3", "Qwen3", build, load)
