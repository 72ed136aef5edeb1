"""Qwen3-MoE (Hugging Face ``Qwen3MoeForCausalLM`` / ``Qwen3MoeModel``) -> anyformer.

Qwen3-MoE is Qwen3 (rotary, RMSNorm, grouped-query attention with an RMSNorm on every query and
key head) whose feedforward is a mixture of ``num_experts`` SwiGLU experts of width
``moe_intermediate_size`` behind a bias-free linear router (Qwen team 2025,
https://arxiv.org/abs/2505.09388). Each token goes to its ``num_experts_per_tok`` best experts,
weighted by the softmax over all experts at the chosen ones, renormalised to sum to 1 when
``norm_topk_prob`` (anyformer's ``ff_router_renormalize=True``, Mixtral's routing) and left as is
otherwise (``ff_router_renormalize=False``). Dense layers among the sparse ones
(``mlp_only_layers``, ``decoder_sparse_step > 1``) are refused: anyformer's mixture covers every
layer. The aux-loss weight maps as Mixtral's (see hf_mixtral.py). Checkpoint layouts: the fused
expert tensors of transformers 5 and the original ``mlp.experts.{j}.gate_proj/up_proj/down_proj``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .hf_base import HFConfig, WeightLoader
from .hf_llama import build_llama_like, llama_like_family
from .hf_mixtral import load as load_mixtral
from .hf_qwen3 import attention_keywords, load_qk_gains

__all__ = ["FAMILY", "build", "load"]

QWEN_EXPERTS = ("mlp.", "gate_proj", "up_proj", "down_proj")


def _mixture_keywords(config: HFConfig) -> dict[str, Any]:
    """The ``ff_*`` mixture keywords; dense layers among the sparse ones are refused."""
    dense = config.value_or("mlp_only_layers", [])
    if dense:
        raise config.unsupported("mlp_only_layers", dense, "every layer must be a mixture")
    step = config.value_or("decoder_sparse_step", 1)
    if step != 1:
        raise config.unsupported("decoder_sparse_step", step, "every layer must be a mixture")
    top_k = config.get("num_experts_per_tok")
    coef = float(config.value_or("router_aux_loss_coef", 0.0))
    balance = coef * top_k if config.value_or("output_router_logits", False) else 0.0
    return {
        "ff_num_experts": config.value_or("num_local_experts", None) or config.get("num_experts"),
        "ff_top_k": top_k,
        "ff_router_renormalize": bool(config.value_or("norm_topk_prob", False)),
        "ff_load_balance_loss_weight": balance,
        "ff_router_z_loss_weight": 0.0,
    }


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Qwen3-MoE's structure (random weights)."""
    mixture = _mixture_keywords(config)
    experts = HFConfig(
        {**config.data, "intermediate_size": config.get("moe_intermediate_size")}, config.family
    )
    return build_llama_like(experts, head, **attention_keywords(config), **mixture)


def load(loader: WeightLoader, config: HFConfig, model: nn.Module, head: str) -> None:
    """Mixtral's loading with Qwen's per-expert names, then the q/k norms' gains (Qwen3's)."""
    load_mixtral(loader, config, model, head, QWEN_EXPERTS)
    load_qk_gains(loader, model)


FAMILY = llama_like_family("Qwen3-MoE", "qwen3_moe", "Qwen3Moe", build, load)
