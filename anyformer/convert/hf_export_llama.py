"""anyformer -> Hugging Face Llama, Mistral, Qwen2, Qwen3 and Phi-3 (the inverse of
:mod:`hf_llama`, :mod:`hf_mistral`, :mod:`hf_qwen2`, :mod:`hf_qwen3`, :mod:`hf_phi3`).

Writes ``LlamaForCausalLM`` / ``LlamaModel`` (biases on all attention projections or none),
``MistralForCausalLM`` / ``MistralModel`` (no biases, one ``attn_sliding_window`` for every
layer), ``Qwen2ForCausalLM`` / ``Qwen2Model`` (biases on q/k/v only), ``Qwen3ForCausalLM`` /
``Qwen3Model`` (``attn_qk_rmsnorm`` with one gain shared by the heads: a model whose heads
learned different gains has no Qwen3 counterpart and raises; for both Qwen families,
per-layer sliding windows of one size as ``layer_types``) and ``Phi3ForCausalLM`` /
``Phi3Model`` (fused q/k/v and gate/up projections; rotary on part of each head,
``partial_rotary_factor``; a sliding window as Mistral's). Token ids for bos/eos/pad are written
as null: a byte-level model has none, and the families' defaults (eos 2, pad 32000, ...) would be
wrong. Only plain rotary (``rope_type`` 'default', base ``rotary_theta``) and linear
interpolation are written; whether the model's other options match the family is checked by
:mod:`anyformer.convert.export`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from . import hf_llama, hf_mistral, hf_phi3, hf_qwen2, hf_qwen3
from .hf_base import HFFamily, layer_pairs, tied_head
from .hf_export_base import HFExporter, configs, split_rows

__all__ = ["LLAMA", "MISTRAL", "PHI3", "QWEN2", "QWEN3"]


def _rope(positions: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": positions.rotary_theta}
    if positions.rotary_interpolation_factor != 1.0:
        params = {**params, "rope_type": "linear", "factor": positions.rotary_interpolation_factor}
    return params


def _qwen_windows(windows: list[int | None]) -> dict[str, Any]:
    """Qwen2 / Qwen3 sliding-window keys for per-layer windows (None: full attention): one
    window size, the layers listed by ``layer_types``; ``max_window_layers`` (the first sliding
    layer, from which transformers' older configs slide) written to agree when it can."""
    sizes = set(windows) - {None}
    if not sizes:
        return {"use_sliding_window": False}
    if len(sizes) > 1:
        raise ValueError(
            f"attn_sliding_window={tuple(windows)} (Qwen2 and Qwen3 have one window size)"
        )
    first = next(i for i, w in enumerate(windows) if w is not None)
    return {
        "use_sliding_window": True,
        "sliding_window": sizes.pop(),
        "max_window_layers": first,
        "layer_types": ["full_attention" if w is None else "sliding_attention" for w in windows],
    }


def _config(net: nn.Module, head: str, model_type: str, arch: str) -> dict[str, Any]:
    wrapper, stack = configs(net)
    attention = stack.attention
    inner = stack.feedforward.inner_dim or int(stack.dim * stack.feedforward.mult)
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [arch],
        "vocab_size": wrapper.num_tokens,
        "hidden_size": stack.dim,
        "intermediate_size": inner,
        "num_hidden_layers": stack.depth,
        "num_attention_heads": stack.heads,
        "num_key_value_heads": attention.kv_heads_for(stack.heads),
        "head_dim": attention.dim_head,
        "hidden_act": "silu",
        "max_position_embeddings": wrapper.max_seq_len,
        "rms_norm_eps": stack.norm.eps,
        "attention_dropout": attention.dropout,
        "tie_word_embeddings": head == "lm" and tied_head(net),
        "rope_parameters": _rope(stack.positions),
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if model_type in ("llama", "qwen3"):
        config["attention_bias"] = attention.qkv_bias
        config["mlp_bias"] = not stack.feedforward.no_bias
    windows = [attention.window_of_layer(i) for i in range(stack.depth)]
    sizes = set(windows) - {None}
    if model_type in ("qwen2", "qwen3"):
        config.update(_qwen_windows(windows))
    if model_type in ("mistral", "phi3"):  # an int: every layer (a per-layer list differs)
        config["sliding_window"] = sizes.pop() if len(sizes) == 1 else attention.sliding_window
    if model_type == "qwen3":
        config.pop("mlp_bias")
    if model_type == "phi3":
        rotary = (
            stack.positions.rotary_dim(attention.dim_head) if stack.positions.uses_rotary else 0
        )
        config["partial_rotary_factor"] = rotary / attention.dim_head
    return config


def _weights(net: nn.Module, head: str) -> dict[str, Tensor]:
    stack = net.get_submodule("attn_layers")
    _, config = configs(net)
    q_rows = config.heads * config.attention.dim_head
    kv_rows = config.attention.kv_heads_for(config.heads) * config.attention.dim_head
    prefix = "model." if head == "lm" else ""
    out: dict[str, Tensor] = {
        prefix + "embed_tokens.weight": net.get_parameter("token_emb.emb.weight")
    }
    for i, (attn, ff) in enumerate(layer_pairs(stack)):
        p = f"{prefix}layers.{i}."
        out[p + "input_layernorm.weight"] = attn.get_parameter("pre_norm.weight")
        qkv = attn.get_submodule("branch.qkv.to_qkv")
        for kind in ("weight", "bias"):
            value = getattr(qkv, kind, None)
            if value is None:
                continue
            for name, part in zip("qkv", split_rows(value, [q_rows, kv_rows, kv_rows])):
                out[f"{p}self_attn.{name}_proj.{kind}"] = part
        to_out = attn.get_submodule("branch.to_out")
        for kind in ("weight", "bias"):
            if getattr(to_out, kind, None) is not None:
                out[f"{p}self_attn.o_proj.{kind}"] = getattr(to_out, kind)
        out[p + "post_attention_layernorm.weight"] = ff.get_parameter("pre_norm.weight")
        proj_in, proj_out = ff.get_submodule("branch.proj_in"), ff.get_submodule("branch.proj_out")
        for kind in ("weight", "bias"):
            value = getattr(proj_in, kind, None)
            if value is not None:  # anyformer's GLU projection is (value, gate) = (up, gate)
                up, gate = split_rows(value, [value.shape[0] // 2] * 2)
                out[f"{p}mlp.up_proj.{kind}"], out[f"{p}mlp.gate_proj.{kind}"] = up, gate
            if getattr(proj_out, kind, None) is not None:
                out[f"{p}mlp.down_proj.{kind}"] = getattr(proj_out, kind)
    out[prefix + "norm.weight"] = stack.get_parameter("final_norm.weight")
    if head == "lm" and not tied_head(net):
        out["lm_head.weight"] = net.get_parameter("to_logits.weight")
    return out


def _exporter(
    family: HFFamily, weights: Callable[[nn.Module, str], dict[str, Tensor]] = _weights
) -> HFExporter:
    """The exporter of a Llama-shaped family: its model type and the class names (one per head)
    that its import side reads."""
    model_type = family.model_types[0]
    names = {head: arch for arch, head in family.architectures.items()}
    return HFExporter(
        family=family,
        architectures=names,
        config=lambda net, head: _config(net, head, model_type, names[head]),
        weights=weights,
    )


LLAMA = _exporter(hf_llama.FAMILY)

QWEN2 = _exporter(hf_qwen2.FAMILY)


def _shared_gain(gain: Tensor, name: str) -> Tensor:
    """The one gain of a (heads, 1, dim_head) q/k norm whose rows are all equal."""
    rows = gain.detach().reshape(gain.shape[0], -1)
    if not bool((rows == rows[:1]).all()):
        raise ValueError(
            f"to_hf: {name}: attn_qk_rmsnorm gains differ between heads; Qwen3 shares one gain "
            "across the heads"
        )
    return rows[0].clone()


def _qwen3_weights(net: nn.Module, head: str) -> dict[str, Tensor]:
    out = _weights(net, head)
    prefix = "model." if head == "lm" else ""
    for i, (attn, _) in enumerate(layer_pairs(net.get_submodule("attn_layers"))):
        norm = attn.get_submodule("branch.qk_rmsnorm")
        for part in ("q", "k"):
            name = f"{prefix}layers.{i}.self_attn.{part}_norm.weight"
            out[name] = _shared_gain(norm.get_parameter(f"{part}_weight"), name)
    return out


QWEN3 = _exporter(hf_qwen3.FAMILY, _qwen3_weights)


def _phi3_weights(net: nn.Module, head: str) -> dict[str, Tensor]:
    """Llama's tensors with q/k/v fused into ``qkv_proj`` and (gate, up) into ``gate_up_proj``."""
    out = _weights(net, head)
    prefix = "model." if head == "lm" else ""
    for i in range(configs(net)[1].depth):
        p = f"{prefix}layers.{i}."
        parts = [out.pop(f"{p}self_attn.{n}_proj.weight") for n in "qkv"]
        out[p + "self_attn.qkv_proj.weight"] = torch.cat(parts)
        gate, up = out.pop(p + "mlp.gate_proj.weight"), out.pop(p + "mlp.up_proj.weight")
        out[p + "mlp.gate_up_proj.weight"] = torch.cat([gate, up])
    return out


PHI3 = _exporter(hf_phi3.FAMILY, _phi3_weights)


MISTRAL = _exporter(hf_mistral.FAMILY)
