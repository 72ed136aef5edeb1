"""Llama (Hugging Face ``LlamaForCausalLM`` / ``LlamaModel``) -> anyformer.

The model: no absolute positions, rotary embeddings on every head's full width with base
``rope_theta``, pre-norm RMSNorm blocks, grouped-query attention (``num_key_value_heads``),
a SwiGLU feedforward of width ``intermediate_size`` without biases, a final RMSNorm and an LM
head (tied only when ``tie_word_embeddings``) (Touvron et al. 2023,
https://arxiv.org/abs/2302.13971). ``attention_bias`` and ``mlp_bias`` map to anyformer's
``attn_qkv_bias``/``attn_out_bias`` and ``ff_no_bias``. Rope types 'default' and 'linear'
(``rotary_interpolation_factor``) are supported; others (dynamic, yarn, llama3, ...) raise
naming the option.
"""

from __future__ import annotations

from torch import Tensor, nn

from .hf_base import (
    HFConfig,
    HFFamily,
    WeightLoader,
    check_divisible,
    layer_pairs,
    rope_settings,
    tied_head,
)

__all__ = ["FAMILY", "build", "build_llama_like", "load"]


def build_llama_like(config: HFConfig, head: str, *, qkv_bias: bool, out_bias: bool) -> nn.Module:
    """A Llama-shaped anyformer TransformerWrapper (Llama, Qwen2, ...), random weights."""
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
        **rope_settings(config, head_dim),
    )
    return TransformerWrapper(
        num_tokens=config.get("vocab_size"),
        max_seq_len=config.value_or("max_position_embeddings", 0),
        use_abs_pos_emb=False,
        tie_embedding=head == "lm" and bool(config.value_or("tie_word_embeddings", False)),
        return_only_embed=head == "hidden",
        attn_layers=stack,
    )


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with Llama's structure (random weights)."""
    bias = bool(config.value_or("attention_bias", False))
    return build_llama_like(config, head, qkv_bias=bias, out_bias=bias)


def load(loader: WeightLoader, config: HFConfig, model: nn.Module, head: str) -> None:
    """Copy a Llama-shaped checkpoint's tensors into ``model`` (built by ``build``)."""
    take, maybe = loader.take, loader.take_optional

    def linear(name: str) -> tuple[Tensor, Tensor | None]:
        return take(f"{name}.weight"), maybe(f"{name}.bias")

    embedding = model.get_parameter("token_emb.emb.weight")
    loader.set(embedding, take("embed_tokens.weight"), "embed_tokens.weight")
    stack = model.get_submodule("attn_layers")
    for i, (attn, ff) in enumerate(layer_pairs(stack)):
        p = f"layers.{i}."
        gain = take(p + "input_layernorm.weight")
        loader.set_norm(attn.get_submodule("pre_norm"), gain, None, p + "input_ln")
        a = p + "self_attn."
        q, k, v, o = (linear(a + n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        loader.set_attention(attn.get_submodule("branch"), q, k, v, o, a[:-1])
        gain = take(p + "post_attention_layernorm.weight")
        loader.set_norm(ff.get_submodule("pre_norm"), gain, None, p + "post_attention_layernorm")
        m = p + "mlp."
        gate, up, down = (linear(m + n) for n in ("gate_proj", "up_proj", "down_proj"))
        loader.set_feedforward(ff.get_submodule("branch"), up, down, m[:-1], gate=gate)
    loader.set_norm(stack.get_submodule("final_norm"), take("norm.weight"), None, "norm")
    if head == "lm":
        loader.set_head(model, tied=tied_head(model))


FAMILY = HFFamily(
    name="Llama",
    model_types=("llama",),
    architectures={"LlamaForCausalLM": "lm", "LlamaModel": "hidden"},
    build=build,
    load=load,
    prefixes=("model.", ""),
    probe="embed_tokens.weight",
    ignore=("*rotary_emb.inv_freq",),  # a computed buffer that older checkpoints saved
)
