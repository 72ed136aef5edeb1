"""Llama (Hugging Face ``LlamaForCausalLM`` / ``LlamaModel``) -> anyformer.

The model: no absolute positions, rotary embeddings on every head's full width with base
``rope_theta``, pre-norm RMSNorm blocks, grouped-query attention (``num_key_value_heads``),
a SwiGLU feedforward of width ``intermediate_size`` without biases, a final RMSNorm and an LM
head (tied only when ``tie_word_embeddings``) (Touvron et al. 2023,
https://arxiv.org/abs/2302.13971). ``attention_bias`` and ``mlp_bias`` map to anyformer's
``attn_qkv_bias``/``attn_out_bias`` and ``ff_no_bias``. Rope types: 'default', 'linear'
(``rotary_interpolation_factor``), 'llama3' (Llama 3.1+), 'yarn', 'dynamic' and 'longrope'
(``rotary_scaling``; see hf_rope.py); others raise naming the option. With 'dynamic' the model's
``max_seq_len`` is ``max_position_embeddings * factor`` (the length the scaling reaches), so that
generation does not slide a window at the original length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .hf_base import (
    HFConfig,
    HFFamily,
    WeightLoader,
    check_divisible,
    layer_pairs,
    tied_head,
)
from .hf_rope import context_length, rope_keywords

__all__ = [
    "FAMILY",
    "build",
    "build_llama_like",
    "llama_like_family",
    "load",
    "load_llama_like",
    "separate_attention",
]


def build_llama_like(
    config: HFConfig,
    head: str,
    *,
    qkv_bias: bool,
    out_bias: bool,
    partial_rotary: bool = False,
    **extra: Any,
) -> nn.Module:
    """A Llama-shaped anyformer TransformerWrapper (Llama, Qwen2, Qwen3, Phi-3), random weights.
    ``partial_rotary``: the family honours ``partial_rotary_factor``; ``extra``: more stack
    keywords (Qwen3's qk-norm)."""
    from ..stack import Decoder
    from ..wrappers import TransformerWrapper

    config.require("hidden_act", ("silu",))
    heads = config.get("num_attention_heads")
    kv_heads = config.value_or("num_key_value_heads", heads)
    if config.data.get("head_dim") is None:
        head_dim = check_divisible(config, "hidden_size", "num_attention_heads")
    else:
        head_dim = config.get("head_dim")
    if heads % kv_heads:
        raise config.unsupported(
            "num_key_value_heads", kv_heads, f"it does not divide num_attention_heads={heads}"
        )
    gqa = {"attn_kv_heads": kv_heads} if kv_heads != heads else {}
    mlp_bias = bool(config.value_or("mlp_bias", False))
    rope = rope_keywords(config, head_dim, partial=partial_rotary)
    stack = Decoder(
        dim=config.get("hidden_size"),
        depth=config.get("num_hidden_layers"),
        heads=heads,
        attn_dim_head=head_dim,
        attn_qkv_bias=qkv_bias,
        attn_out_bias=out_bias,
        attn_dropout=float(config.value_or("attention_dropout", 0.0)),
        use_rmsnorm=True,
        norm_eps=float(config.value_or("rms_norm_eps", 1e-6)),
        ff_glu=True,
        ff_swish=True,
        ff_inner_dim=config.get("intermediate_size"),
        ff_no_bias=not mlp_bias,
        **gqa,
        **rope,
        **extra,
    )
    return TransformerWrapper(
        num_tokens=config.get("vocab_size"),
        max_seq_len=context_length(config.value_or("max_position_embeddings", 0), rope),
        use_abs_pos_emb=False,
        tie_embedding=head == "lm" and bool(config.value_or("tie_word_embeddings", False)),
        return_only_embed=head == "hidden",
        attn_layers=stack,
    )


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Llama's structure (random weights)."""
    bias = bool(config.value_or("attention_bias", False))
    return build_llama_like(config, head, qkv_bias=bias, out_bias=bias)


Linear = tuple[Tensor, Tensor | None]  # (weight, bias or None)


def load_llama_like(
    loader: WeightLoader,
    model: nn.Module,
    head: str,
    attention: Callable[[str, nn.Module], tuple[Linear, Linear, Linear, Linear]],
    feedforward: Callable[[str, nn.Module], None],
) -> None:
    """Copy a Llama-shaped checkpoint (embeddings, pre-norm blocks, final norm, head) into
    ``model``; ``attention(prefix, branch)`` takes one layer's (q, k, v, out) tensors under
    ``prefix`` (``layers.{i}.self_attn.``) and ``feedforward(prefix, branch)`` sets one layer's
    feedforward from ``layers.{i}.mlp.``: the parts in which the families differ."""
    take = loader.take
    embedding = model.get_parameter("token_emb.emb.weight")
    loader.set(embedding, take("embed_tokens.weight"), "embed_tokens.weight")
    stack = model.get_submodule("attn_layers")
    for i, (attn, ff) in enumerate(layer_pairs(stack)):
        p = f"layers.{i}."
        gain = take(p + "input_layernorm.weight")
        loader.set_norm(attn.get_submodule("pre_norm"), gain, None, p + "input_layernorm")
        branch = attn.get_submodule("branch")
        q, k, v, o = attention(p + "self_attn.", branch)
        loader.set_attention(branch, q, k, v, o, p + "self_attn")
        gain = take(p + "post_attention_layernorm.weight")
        loader.set_norm(ff.get_submodule("pre_norm"), gain, None, p + "post_attention_layernorm")
        feedforward(p + "mlp.", ff.get_submodule("branch"))
    loader.set_norm(stack.get_submodule("final_norm"), take("norm.weight"), None, "norm")
    if head == "lm":
        loader.set_head(model, tied=tied_head(model))


def _linear(loader: WeightLoader, name: str) -> Linear:
    return loader.take(f"{name}.weight"), loader.take_optional(f"{name}.bias")


def separate_attention(
    loader: WeightLoader,
) -> Callable[[str, nn.Module], tuple[Linear, Linear, Linear, Linear]]:
    """Llama's attention tensors for :func:`load_llama_like`: ``{q,k,v,o}_proj.weight`` and the
    optional biases."""

    def attention(a: str, branch: nn.Module) -> tuple[Linear, Linear, Linear, Linear]:
        q, k, v, o = (_linear(loader, f"{a}{n}_proj") for n in "qkvo")
        return q, k, v, o

    return attention


def load(loader: WeightLoader, config: HFConfig, model: nn.Module, head: str) -> None:
    """Copy a Llama-shaped checkpoint's tensors into ``model`` (built by ``build``)."""

    def feedforward(m: str, branch: nn.Module) -> None:
        gate, up, down = (_linear(loader, m + n) for n in ("gate_proj", "up_proj", "down_proj"))
        loader.set_feedforward(branch, up, down, m[:-1], gate=gate)

    load_llama_like(loader, model, head, separate_attention(loader), feedforward)


def llama_like_family(
    name: str,
    model_type: str,
    stem: str,
    build: Callable[[HFConfig, str], nn.Module],
    load: Callable[[WeightLoader, HFConfig, nn.Module, str], None],
) -> HFFamily:
    """The :class:`HFFamily` of a Llama-shaped family: ``{stem}ForCausalLM`` / ``{stem}Model``,
    tensors under ``model.`` or bare, no saved rotary buffer."""
    return HFFamily(
        name=name,
        model_types=(model_type,),
        architectures={f"{stem}ForCausalLM": "lm", f"{stem}Model": "hidden"},
        build=build,
        load=load,
        prefixes=("model.", ""),
        probe="embed_tokens.weight",
        ignore=("*rotary_emb.inv_freq",),  # a computed buffer that older checkpoints saved
    )


FAMILY = llama_like_family("Llama", "llama", "Llama", build, load)
