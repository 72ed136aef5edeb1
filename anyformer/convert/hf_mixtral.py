"""Mixtral (Hugging Face ``MixtralForCausalLM`` / ``MixtralModel``) -> anyformer.

Mixtral is Mistral with a sparse mixture-of-experts feedforward in every layer (Jiang et al.
2024, https://arxiv.org/abs/2401.04088): a linear router without bias scores the
``num_local_experts`` SwiGLU experts (each of width ``intermediate_size``), every token goes
through its ``num_experts_per_tok`` best ones, weighted by the softmax over all experts taken
at the chosen ones and renormalised to sum to 1, which is the softmax over the chosen logits:
anyformer's ``ff_num_experts``, ``ff_top_k`` and ``ff_router_renormalize=True``.

Checkpoints come in two layouts, both read: transformers 5's fused expert tensors
(``mlp.gate.weight``, ``mlp.experts.gate_up_proj`` (E, 2I, H) with the gate rows first,
``mlp.experts.down_proj`` (E, H, I)) and the original per-expert ones
(``block_sparse_moe.gate.weight``, ``block_sparse_moe.experts.{j}.w1/w3/w2.weight`` = gate, up,
down).

Training aux loss: Hugging Face adds ``router_aux_loss_coef`` times ``num_experts * sum_i
c_i * P_i`` when ``output_router_logits``, with c_i the routed pairs of expert i over the tokens
(summing to top_k) pooled over all layers; anyformer's load-balancing loss divides c_i by top_k
and averages the layers, so the weight becomes ``router_aux_loss_coef * top_k`` (equal for one
layer; with more layers anyformer balances each layer, Hugging Face the pooled counts), and 0 when
``output_router_logits`` is false. Mixtral has no router z-loss. ``router_jitter_noise`` (a
training-time input jitter) is refused when non-zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .hf_base import HFConfig, WeightLoader
from .hf_llama import build_llama_like, llama_like_family, load_llama_like, separate_attention
from .hf_mistral import window_keywords

__all__ = ["FAMILY", "MIXTRAL_EXPERTS", "build", "load", "mixture_keywords"]


def mixture_keywords(config: HFConfig) -> dict[str, Any]:
    """The ``ff_*`` mixture keywords of a Mixtral config."""
    jitter = config.value_or("router_jitter_noise", 0.0)
    if jitter:
        raise config.unsupported(
            "router_jitter_noise", jitter, "anyformer's router has no input jitter (use 0.0)"
        )
    top_k = config.get("num_experts_per_tok")
    coef = float(config.value_or("router_aux_loss_coef", 0.0))
    balance = coef * top_k if config.value_or("output_router_logits", False) else 0.0
    return {
        "ff_num_experts": config.get("num_local_experts"),
        "ff_top_k": top_k,
        "ff_router_renormalize": True,
        "ff_load_balance_loss_weight": balance,
        "ff_router_z_loss_weight": 0.0,
    }


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Mixtral's structure (random weights)."""
    return build_llama_like(
        config,
        head,
        qkv_bias=False,
        out_bias=False,
        **window_keywords(config),
        **mixture_keywords(config),
    )


#: The original per-expert layout: (block, gate, up, down) names (Mixtral's).
MIXTRAL_EXPERTS = ("block_sparse_moe.", "w1", "w3", "w2")


def _expert_tensors(
    loader: WeightLoader, p: str, count: int, names: tuple[str, ...] = MIXTRAL_EXPERTS
) -> tuple[Tensor, list[Tensor]]:
    """Layer prefix ``p`` -> the router weight and, per expert, anyformer's (proj_in, proj_out)
    weights: proj_in stacks (up; gate), the order anyformer's GLU splits. ``names``: the
    per-expert layout's (block, gate, up, down) names."""
    if loader.has(p + "mlp.experts.gate_up_proj"):  # transformers 5: (E, 2I, H), (E, H, I)
        router = loader.take(p + "mlp.gate.weight")
        gate_up = loader.take(p + "mlp.experts.gate_up_proj")
        down = loader.take(p + "mlp.experts.down_proj")
        gate, up = gate_up.chunk(2, dim=1)
        return router, [t for j in range(count) for t in (torch.cat([up[j], gate[j]]), down[j])]
    m = p + names[0]
    router = loader.take(m + "gate.weight")
    weights = []
    for j in range(count):
        gate_w, up_w, down_w = (loader.take(f"{m}experts.{j}.{n}.weight") for n in names[1:])
        weights += [torch.cat([up_w, gate_w]), down_w]
    return router, weights


def load(
    loader: WeightLoader,
    config: HFConfig,
    model: nn.Module,
    head: str,
    names: tuple[str, ...] = MIXTRAL_EXPERTS,
) -> None:
    """Copy a Mixtral checkpoint's tensors into ``model`` (built by ``build``); ``names``: the
    per-expert layout's names (another Mixtral-shaped family's)."""

    def feedforward(m: str, moe: nn.Module) -> None:
        p = m[: -len("mlp.")]
        experts = list(moe.get_submodule("experts").children())
        router, weights = _expert_tensors(loader, p, len(experts), names)
        loader.set(moe.get_parameter("router.weight"), router, p + "mlp.gate.weight")
        for j, expert in enumerate(experts):
            loader.set_linear(
                expert.get_submodule("proj_in"), weights[2 * j], None, f"{p}mlp.experts.{j}.gate_up"
            )
            loader.set_linear(
                expert.get_submodule("proj_out"),
                weights[2 * j + 1],
                None,
                f"{p}mlp.experts.{j}.down",
            )

    load_llama_like(loader, model, head, separate_attention(loader), feedforward)


FAMILY = llama_like_family("Mixtral", "mixtral", "Mixtral", build, load)
