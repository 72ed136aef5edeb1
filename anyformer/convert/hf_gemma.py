"""Gemma 2 and Gemma 3 text (Hugging Face ``Gemma2ForCausalLM`` / ``Gemma3ForCausalLM`` and their
base models) -> anyformer.

Both (Gemma Team 2024, https://arxiv.org/abs/2408.00118; 2025, https://arxiv.org/abs/2503.19786)
are decoders with rotary positions, grouped-query attention with logits scaled by
``query_pre_attn_scalar ** -0.5`` (``attn_scale``), a GeGLU feedforward (``hidden_activation``,
tanh GELU), RMSNorms of the form ``x / rms(x) * (1 + w)`` (converted by storing ``1 + w``, in
float32 as Hugging Face computes it), a norm before and after every branch (``sandwich_norm``),
token embeddings multiplied by ``sqrt(hidden_size)`` rounded to the model's dtype
(``token_emb_scale``) and a tied LM head. Layers alternate sliding-window and global attention
(``layer_types``; ``attn_sliding_window`` per layer).

Gemma 2 adds soft caps ``c * tanh(x / c)`` on the attention logits (``attn_logit_softcapping``:
``attn_softclamp_logits``) and on the output logits (``final_logit_softcapping``:
``logit_softclamp_value``). Gemma 3 replaces them (off by default; a final cap is honoured, an
attention cap raises: transformers 5 ignores it there, 4.x applied it) by an
RMSNorm ``(1 + w)`` on every query and key head (``attn_qk_rmsnorm``), and gives its
sliding-window layers their own plain rotary base (``rope_local_base_freq``, or
``rope_parameters['sliding_attention']``: ``rotary_local_theta``) while the global layers keep
``rope_theta`` and its scaling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .hf_base import (
    HFConfig,
    HFFamily,
    WeightLoader,
    hf_activation,
    layer_pairs,
    tied_head,
)
from .hf_rope import context_length, rope_keywords
from .hf_table import TensorRule, load_rules

__all__ = ["GEMMA2", "GEMMA3", "UnitOffsetRule", "build_gemma2", "build_gemma3", "load", "rules"]

_LAYER_TYPES = ("sliding_attention", "full_attention")
_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu")


def _default_types(config: HFConfig, depth: int) -> list[str]:
    """Gemma 2: sliding on even layers; Gemma 3: every ``sliding_window_pattern``-th global."""
    pattern = config.value_or(
        "sliding_window_pattern", config.value_or("_sliding_window_pattern", 2)
    )
    return [_LAYER_TYPES[(i + 1) % pattern == 0] for i in range(depth)]


def layer_windows(config: HFConfig) -> tuple[int | None, ...] | None:
    """``attn_sliding_window`` per layer from ``layer_types`` and ``sliding_window`` (None: no
    sliding layer)."""
    depth = config.get("num_hidden_layers")
    types = config.value_or("layer_types", None) or _default_types(config, depth)
    if len(types) != depth:
        raise config.unsupported("layer_types", types, f"expected {depth} entries, one a layer")
    for kind in types:
        if kind not in _LAYER_TYPES:
            raise config.unsupported("layer_types", kind, f"supported: {', '.join(_LAYER_TYPES)}")
    if "sliding_attention" not in types:
        return None
    window = config.data.get("sliding_window")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise config.unsupported("sliding_window", window, "sliding layers need an int >= 1")
    return tuple(window if kind == "sliding_attention" else None for kind in types)


def _cap(config: HFConfig, key: str) -> float | None:
    value = config.value_or(key, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise config.unsupported(key, value, "expected a number > 0 or null")
    return float(value)


def _attention_keywords(config: HFConfig, head_dim: int) -> dict[str, Any]:
    heads = config.get("num_attention_heads")
    kv_heads = config.value_or("num_key_value_heads", heads)
    if heads % kv_heads:
        raise config.unsupported(
            "num_key_value_heads", kv_heads, f"it does not divide num_attention_heads={heads}"
        )
    scalar = config.value_or("query_pre_attn_scalar", head_dim)
    if isinstance(scalar, bool) or not isinstance(scalar, (int, float)) or not scalar > 0:
        raise config.unsupported("query_pre_attn_scalar", scalar, "expected a number > 0")
    bias = bool(config.value_or("attention_bias", False))
    keywords: dict[str, Any] = dict(
        heads=heads, attn_dim_head=head_dim, attn_scale=float(scalar) ** -0.5,
        attn_qkv_bias=bias, attn_out_bias=bias,
        attn_dropout=float(config.value_or("attention_dropout", 0.0)),
    )  # fmt: skip
    if kv_heads != heads:
        keywords["attn_kv_heads"] = kv_heads
    cap = _cap(config, "attn_logit_softcapping")
    if cap is not None:
        keywords.update(attn_softclamp_logits=True, attn_logit_softclamp_value=cap)
    windows = layer_windows(config)
    if windows is not None:
        keywords["attn_sliding_window"] = windows
    return keywords


def _build(config: HFConfig, head: str, rope: dict[str, Any], **extra: Any) -> nn.Module:
    """A Gemma-shaped anyformer TransformerWrapper (random weights)."""
    from ..stack import Decoder
    from ..wrappers import TransformerWrapper

    config.require("use_bidirectional_attention", (None, False), None)
    dim = config.get("hidden_size")
    stack = Decoder(
        dim=dim,
        depth=config.get("num_hidden_layers"),
        use_rmsnorm=True,
        norm_eps=float(config.value_or("rms_norm_eps", 1e-6)),
        sandwich_norm=True,
        ff_glu=True,
        ff_inner_dim=config.get("intermediate_size"),
        ff_no_bias=True,
        **hf_activation(config, "hidden_activation", _ACTIVATIONS),
        **_attention_keywords(config, config.get("head_dim")),
        **rope,
        **extra,
    )
    final_cap = _cap(config, "final_logit_softcapping") if head == "lm" else None
    return TransformerWrapper(
        num_tokens=config.get("vocab_size"),
        max_seq_len=context_length(config.value_or("max_position_embeddings", 0), rope),
        use_abs_pos_emb=False,
        tie_embedding=head == "lm" and bool(config.value_or("tie_word_embeddings", True)),
        return_only_embed=head == "hidden",
        token_emb_scale=dim**0.5,
        logit_softclamp_value=final_cap,
        attn_layers=stack,
    )


def build_gemma2(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Gemma 2's structure (random weights)."""
    return _build(config, head, rope_keywords(config, config.get("head_dim")))


def _gemma3_rope(config: HFConfig, head_dim: int) -> dict[str, Any]:
    """Global layers: ``rope_theta`` and its scaling; sliding layers: ``rotary_local_theta``
    (transformers 5 nests both in ``rope_parameters``; 4 has ``rope_local_base_freq``)."""
    params = config.data.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:
        full = HFConfig({**config.data, "rope_parameters": params["full_attention"]}, config.family)
        local_params = params.get("sliding_attention") or {}
        kind = local_params.get("rope_type", "default")
        if kind != "default":
            raise config.unsupported(
                "rope_parameters", params, "sliding_attention layers take plain rotary only"
            )
        local = local_params.get("rope_theta", 10000.0)
    else:
        full, local = config, config.value_or("rope_local_base_freq", 10000.0)
    keywords = rope_keywords(full, head_dim)
    if layer_windows(config) is not None:
        keywords["rotary_local_theta"] = float(local)
    return keywords


def build_gemma3(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Gemma 3's text structure (random weights)."""
    cap = config.value_or("attn_logit_softcapping", None)
    if cap is not None:  # transformers 4.5x capped Gemma 3's attention logits, 5.x does not
        raise config.unsupported(
            "attn_logit_softcapping",
            cap,
            "Hugging Face transformers 5 ignores it in Gemma 3 while 4.x applied it: ambiguous",
        )
    return _build(
        config,
        head,
        _gemma3_rope(config, config.get("head_dim")),
        attn_qk_rmsnorm=True,
        attn_qk_rmsnorm_eps=float(config.value_or("rms_norm_eps", 1e-6)),
    )


@dataclass(frozen=True)
class UnitOffsetRule(TensorRule):
    """A Gemma norm weight w stored as anyformer's gain 1 + w (in float32 at least, as Hugging
    Face adds it at run time); ``heads`` > 0: a q/k norm gain, one row shared by the heads,
    copied into each head's row of anyformer's (heads, 1, d) gain."""

    heads: int = 0

    def to_ours(self, tensors: Sequence[Tensor]) -> Tensor:
        weight = tensors[0]
        gain = weight.to(torch.promote_types(weight.dtype, torch.float32)) + 1.0
        return gain.expand(self.heads, 1, -1) if self.heads else gain

    def to_hf(self, tensor: Tensor) -> dict[str, Tensor]:
        gain = tensor[0, 0] if self.heads else tensor
        weight = gain.to(torch.promote_types(gain.dtype, torch.float32)) - 1.0
        return {self.hf[0]: weight.to(tensor.dtype).contiguous()}


def _layer_rules(config: HFConfig, i: int, qk_norm: bool) -> list[TensorRule]:
    """Layer i of a Gemma checkpoint (``layers.{i}.*``) <- anyformer blocks 2i (attention) and
    2i + 1 (feedforward)."""
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    kv_heads, inner = config.value_or("num_key_value_heads", heads), config.get("intermediate_size")
    a, f, p = f"attn_layers.layers.{2 * i}.", f"attn_layers.layers.{2 * i + 1}.", f"layers.{i}."
    s, m = p + "self_attn.", p + "mlp."
    qkv_rows = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
    rules: list[TensorRule] = [
        UnitOffsetRule(a + "pre_norm.weight", (p + "input_layernorm.weight",)),
        UnitOffsetRule(a + "post_branch_norm.weight", (p + "post_attention_layernorm.weight",)),
        UnitOffsetRule(f + "pre_norm.weight", (p + "pre_feedforward_layernorm.weight",)),
        UnitOffsetRule(f + "post_branch_norm.weight", (p + "post_feedforward_layernorm.weight",)),
        TensorRule(a + "branch.qkv.to_qkv.weight", tuple(f"{s}{n}_proj.weight" for n in "qkv"),
                   qkv_rows),
        TensorRule(a + "branch.to_out.weight", (s + "o_proj.weight",)),
        TensorRule(f + "branch.proj_in.weight", (m + "up_proj.weight", m + "gate_proj.weight"),
                   (inner, inner)),
        TensorRule(f + "branch.proj_out.weight", (m + "down_proj.weight",)),
    ]  # fmt: skip
    if config.value_or("attention_bias", False):
        rules += [
            TensorRule(a + "branch.qkv.to_qkv.bias", tuple(f"{s}{n}_proj.bias" for n in "qkv"),
                       qkv_rows),
            TensorRule(a + "branch.to_out.bias", (s + "o_proj.bias",)),
        ]  # fmt: skip
    if qk_norm:
        for part, n in (("q", heads), ("k", kv_heads)):
            name = f"{a}branch.qk_rmsnorm.{part}_weight"
            rules.append(UnitOffsetRule(name, (f"{s}{part}_norm.weight",), heads=n))
    return rules


def rules(config: HFConfig, *, qk_norm: bool) -> list[TensorRule]:
    """The tensor table of a Gemma 2 (``qk_norm=False``) / Gemma 3 base model, both ways (the LM
    head, ``lm_head.weight`` outside the base model, is the wrapper's ``to_logits.weight`` or
    tied to the embedding)."""
    table = [TensorRule("token_emb.emb.weight", ("embed_tokens.weight",))]
    for i in range(config.get("num_hidden_layers")):
        table += _layer_rules(config, i, qk_norm)
    table.append(UnitOffsetRule("attn_layers.final_norm.weight", ("norm.weight",)))
    return table


def load(loader: WeightLoader, config: HFConfig, model: nn.Module, head: str) -> None:
    """Copy a Gemma 2 / Gemma 3 checkpoint's tensors into ``model`` (built by ``build_*``)."""
    qk_norm = config.family == "Gemma3"
    layer_pairs(model.get_submodule("attn_layers"))  # attention + feedforward blocks
    load_rules(loader, model, rules(config, qk_norm=qk_norm))
    if head == "lm":
        loader.set_head(model, tied=tied_head(model))


GEMMA2 = HFFamily(
    name="Gemma2",
    model_types=("gemma2",),
    architectures={"Gemma2ForCausalLM": "lm", "Gemma2Model": "hidden"},
    build=build_gemma2,
    load=load,
    prefixes=("model.", ""),
    probe="embed_tokens.weight",
    ignore=("*rotary_emb.inv_freq", "*rotary_emb_local.inv_freq"),
)

GEMMA3 = HFFamily(
    name="Gemma3",
    model_types=("gemma3_text",),
    architectures={"Gemma3ForCausalLM": "lm", "Gemma3TextModel": "hidden"},
    build=build_gemma3,
    load=load,
    prefixes=("model.", ""),
    probe="embed_tokens.weight",
    ignore=("*rotary_emb.inv_freq", "*rotary_emb_local.inv_freq"),
)
