"""anyformer -> Hugging Face GPT-2 (the inverse of :mod:`hf_gpt2`).

Writes ``GPT2LMHeadModel`` / ``GPT2Model``: the q/k/v and output projections as ``Conv1D``
((in, out) weights), the learned position table multiplied by anyformer's lookup scale
(Hugging Face adds it unscaled), rounded so that importing it back gives the same table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import hf_gpt2
from .hf_base import layer_pairs, tied_head
from .hf_export_base import HFExporter, configs

__all__ = ["GPT2", "unscaled_table"]


def _activation(ff: Any) -> str:
    return "gelu_new" if ff.gelu_tanh else "gelu"


def _config(net: nn.Module, head: str) -> dict[str, Any]:
    wrapper, stack = configs(net)
    ff = stack.feedforward
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel" if head == "lm" else "GPT2Model"],
        "vocab_size": wrapper.num_tokens,
        "n_positions": wrapper.max_seq_len,
        "n_embd": stack.dim,
        "n_layer": stack.depth,
        "n_head": stack.heads,
        "n_inner": ff.inner_dim or int(stack.dim * ff.mult),
        "activation_function": _activation(ff),
        "layer_norm_epsilon": stack.norm.eps,
        "attn_pdrop": stack.attention.dropout,
        "embd_pdrop": wrapper.emb_dropout,
        "resid_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": head == "lm" and tied_head(net),
        "use_cache": True,
    }


def unscaled_table(table: Tensor, scale: float) -> Tensor:
    """``table * scale`` in ``table``'s dtype, each entry nudged by one step where that makes
    the import (``(x / scale)`` computed in float64, rounded once) give ``table`` back."""
    exact = table.detach().double()
    out = exact.mul(scale).to(table.dtype)
    for direction in (float("inf"), float("-inf")):
        back = out.double().div(scale).to(table.dtype)
        wrong = back != table
        if not wrong.any():
            break
        step = torch.nextafter(out, torch.full_like(out, direction))
        fixed = step.double().div(scale).to(table.dtype) == table
        out = torch.where(wrong & fixed, step, out)
    return out


def _weights(net: nn.Module, head: str) -> dict[str, Tensor]:
    prefix = "transformer." if head == "lm" else ""
    pos_emb = net.get_submodule("pos_emb")
    table = pos_emb.get_parameter("emb.weight")
    out: dict[str, Tensor] = {
        prefix + "wte.weight": net.get_parameter("token_emb.emb.weight"),
        prefix + "wpe.weight": unscaled_table(table, float(getattr(pos_emb, "scale", 1.0))),
    }

    def conv1d(name: str, linear: nn.Module) -> None:
        out[name + ".weight"] = linear.get_parameter("weight").t()
        out[name + ".bias"] = linear.get_parameter("bias")

    def norm(name: str, module: nn.Module) -> None:
        out[name + ".weight"] = module.get_parameter("weight")
        out[name + ".bias"] = module.get_parameter("bias")

    stack = net.get_submodule("attn_layers")
    for i, (attn, ff) in enumerate(layer_pairs(stack)):
        p = f"{prefix}h.{i}."
        norm(p + "ln_1", attn.get_submodule("pre_norm"))
        conv1d(p + "attn.c_attn", attn.get_submodule("branch.qkv.to_qkv"))
        conv1d(p + "attn.c_proj", attn.get_submodule("branch.to_out"))
        norm(p + "ln_2", ff.get_submodule("pre_norm"))
        conv1d(p + "mlp.c_fc", ff.get_submodule("branch.proj_in"))
        conv1d(p + "mlp.c_proj", ff.get_submodule("branch.proj_out"))
    norm(prefix + "ln_f", stack.get_submodule("final_norm"))
    if head == "lm" and not tied_head(net):
        out["lm_head.weight"] = net.get_parameter("to_logits.weight")
    return out


GPT2 = HFExporter(
    family=hf_gpt2.FAMILY,
    architectures={"lm": "GPT2LMHeadModel", "hidden": "GPT2Model"},
    config=_config,
    weights=_weights,
)
