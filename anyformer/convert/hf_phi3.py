"""Phi-3 (Hugging Face ``Phi3ForCausalLM`` / ``Phi3Model``) -> anyformer.

Phi-3 is Llama-shaped (pre-norm RMSNorm blocks, grouped-query attention, SwiGLU, no biases)
with a fused ``qkv_proj`` (queries, keys, values stacked on the output axis) and a fused
``gate_up_proj`` (the gate half first), split here into anyformer's q/k/v and GLU halves
(Abdin et al. 2024, https://arxiv.org/abs/2404.14219). Rotary may cover only the first
``partial_rotary_factor`` of each head (anyformer's ``rotary_emb_dim``), and the long-context
variants use LongRoPE (``rope_type`` 'longrope', or the legacy names 'su' / 'yarn' that
transformers reads as longrope): per-frequency ``short_factor`` / ``long_factor`` and the
attention factor (anyformer's ``rotary_scaling='longrope'``).

LongRoPE and caching: anyformer computes each forward's frequencies from its own length, so a
cached decode that crosses ``original_max_position_embeddings`` keeps the short-factor rotation
of the rows already cached, whereas Hugging Face's ``generate`` recomputes the whole sequence
with the long factors at that step (full forwards agree, and decodes that stay on one side of
the boundary agree). Dropouts (``resid_pdrop``, ``embd_pdrop``) act only in training and are not
converted. ``sliding_window`` (every layer; Phi-3-mini: 2047) is anyformer's
``attn_sliding_window``: the query at i sees the keys j with ``i - W < j <= i``, as Hugging
Face's mask.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .hf_base import HFConfig, WeightLoader
from .hf_llama import Linear, build_llama_like, llama_like_family, load_llama_like
from .hf_mistral import window_keywords

__all__ = ["FAMILY", "build", "load"]

_LEGACY_LONGROPE = ("su", "yarn")  # transformers' Phi3Config renames these to 'longrope'


def _standard(config: HFConfig) -> HFConfig:
    """The config with a legacy rope type renamed as transformers does for Phi-3."""
    data: dict[str, Any] = dict(config.data)
    for key in ("rope_parameters", "rope_scaling"):
        params = data.get(key)
        if isinstance(params, dict):
            kind = params.get("rope_type", params.get("type"))
            if kind in _LEGACY_LONGROPE:
                params = {k: v for k, v in params.items() if k != "type"}
                data[key] = {**params, "rope_type": "longrope"}
    return HFConfig(data, config.family)


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Phi-3's structure (random weights)."""
    return build_llama_like(
        _standard(config),
        head,
        qkv_bias=False,
        out_bias=False,
        partial_rotary=True,
        **window_keywords(config),
    )


def load(loader: WeightLoader, config: HFConfig, model: nn.Module, head: str) -> None:
    """Copy a Phi-3 checkpoint's tensors into ``model`` (built by ``build``)."""
    take = loader.take

    def attention(a: str, branch: nn.Module) -> tuple[Linear, Linear, Linear, Linear]:
        heads, kv_heads, dim_head = (
            int(getattr(branch, n)) for n in ("heads", "kv_heads", "dim_head")
        )
        q_dim, kv_dim = heads * dim_head, kv_heads * dim_head
        q, k, v = take(a + "qkv_proj.weight").split((q_dim, kv_dim, kv_dim))
        return (q, None), (k, None), (v, None), (take(a + "o_proj.weight"), None)

    def feedforward(m: str, branch: nn.Module) -> None:
        gate, up = take(m + "gate_up_proj.weight").chunk(2)
        down = take(m + "down_proj.weight")
        loader.set_feedforward(branch, (up, None), (down, None), m[:-1], gate=(gate, None))

    load_llama_like(loader, model, head, attention, feedforward)


FAMILY = llama_like_family("Phi3", "phi3", "Phi3", build, load)
