"""Named model recipes, each a plain dict of keywords (wrapper and stack keywords side by side).

A preset is data: read it, change it, pass it on. :func:`build` splits it between the wrapper
(``TransformerWrapper`` / ``ViTransformerWrapper``) and the stack (``Decoder`` / ``Encoder``)
and builds the model; the language-model presets' dicts are also valid ``model`` sections of an
``anyformer train`` configuration.

>>> model = build("llama", dim=64, depth=2, heads=4, kv_heads=2, num_tokens=256)

Each function's docstring names where its numbers come from. Where a recipe's published model
differs from what anyformer's modules compute, the docstring says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from . import stack, wrappers
from .config.vit import ViTConfig
from .config.wrapper import split_keywords, wrapper_keywords

__all__ = ["PRESETS", "bert", "build", "gpt2", "llama", "modern", "split", "vit"]

_GPT2_SIZES = {"small": (768, 12, 12), "medium": (1024, 24, 16), "large": (1280, 36, 20),
               "xl": (1600, 48, 25)}  # fmt: skip
_BERT_SIZES = {"tiny": (128, 2, 2), "mini": (256, 4, 4), "small": (512, 4, 8),
               "medium": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}  # fmt: skip
_VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
              "large": (1024, 24, 16), "huge": (1280, 32, 16)}  # fmt: skip


def _size(table: dict[str, tuple[int, int, int]], size: str, preset: str) -> tuple[int, int, int]:
    if size not in table:
        raise ValueError(f"presets.{preset}: size must be one of {list(table)}, got {size!r}")
    return table[size]


def gpt2(size: str = "small", *, num_tokens: int = 50257, max_seq_len: int = 1024) -> dict:
    """GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners";
    sizes small/medium/large/xl = 124M/355M/774M/1558M from its Table 2 and the released
    ``config.json`` files): learned positions, pre-LN with LayerNorm biases (eps 1e-5), biased
    attention and feedforward projections, GELU (tanh approximation), 4 * dim feedforward,
    head tied to the token embedding, dropout 0.1.

    Differences: anyformer scales the learned position lookup by dim**-0.5 (the same function
    class; ``convert.from_hf`` rescales GPT-2's table) and has no residual dropout.
    """
    dim, depth, heads = _size(_GPT2_SIZES, size, "gpt2")
    return {
        "num_tokens": num_tokens,
        "max_seq_len": max_seq_len,
        "tie_embedding": True,
        "emb_dropout": 0.1,
        "dim": dim,
        "depth": depth,
        "heads": heads,
        "attn_dim_head": dim // heads,
        "attn_qkv_bias": True,
        "attn_out_bias": True,
        "attn_dropout": 0.1,
        "norm_bias": True,
        "norm_eps": 1e-5,
        "ff_inner_dim": 4 * dim,
        "ff_gelu_tanh": True,
    }


def llama_ff_width(
    dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None
) -> int:
    """Llama's SwiGLU width: 2/3 of 4 * dim (times ``ffn_dim_multiplier``), rounded up to a
    multiple of ``multiple_of`` (Llama reference code, ``FeedForward``): 11008 for dim 4096."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def _llama_style(
    dim: int,
    depth: int,
    heads: int,
    kv_heads: int | None,
    num_tokens: int,
    max_seq_len: int,
    rope_theta: float,
) -> dict[str, Any]:
    """What Llama-style decoders share: rotary positions over each head's full width (base
    ``rope_theta``), no absolute positions, pre-norm RMSNorm, grouped-query attention with
    ``kv_heads`` key/value heads (None: one per query head), a bias-free SwiGLU feedforward."""
    gqa = {"attn_kv_heads": kv_heads} if kv_heads is not None and kv_heads != heads else {}
    return {
        "num_tokens": num_tokens,
        "max_seq_len": max_seq_len,
        "use_abs_pos_emb": False,
        "dim": dim,
        "depth": depth,
        "heads": heads,
        "attn_dim_head": dim // heads,
        **gqa,
        "rotary_pos_emb": True,
        "rotary_emb_dim": dim // heads,
        "rotary_theta": rope_theta,
        "use_rmsnorm": True,
        "ff_glu": True,
        "ff_swish": True,
        "ff_no_bias": True,
    }


def llama(
    dim: int = 4096,
    depth: int = 32,
    heads: int = 32,
    kv_heads: int | None = None,
    *,
    ff_inner_dim: int | None = None,
    multiple_of: int = 256,
    num_tokens: int = 32000,
    max_seq_len: int = 4096,
    rope_theta: float = 10000.0,
    norm_eps: float = 1e-5,
    tie_embedding: bool = False,
) -> dict:
    """Llama (Touvron et al. 2023, https://arxiv.org/abs/2302.13971 and Llama 2,
    https://arxiv.org/abs/2307.09288); the defaults are Llama 2 7B (dim 4096, 32 layers,
    32 heads, vocabulary 32000, context 4096, RMSNorm eps 1e-5, 6.74B parameters). Rotary
    positions over each head's full width (base ``rope_theta``; Llama 3 uses 500000),
    pre-norm RMSNorm, grouped-query attention with ``kv_heads`` key/value heads (None: one per
    query head, as Llama 2 7B/13B; 70B uses 8), SwiGLU of width :func:`llama_ff_width`
    (unless ``ff_inner_dim``), no biases, an untied head.
    """
    return {
        **_llama_style(dim, depth, heads, kv_heads, num_tokens, max_seq_len, rope_theta),
        "tie_embedding": tie_embedding,
        "norm_eps": norm_eps,
        "ff_inner_dim": ff_inner_dim or llama_ff_width(dim, multiple_of),
    }


def bert(
    size: str = "base", *, num_tokens: int = 30522, max_seq_len: int = 512, type_vocab_size: int = 2
) -> dict:
    """BERT (Devlin et al. 2018, https://arxiv.org/abs/1810.04805; base/large from its
    section 3, tiny..medium from Turc et al. 2019, https://arxiv.org/abs/1908.08962): token +
    position + token-type embeddings with a LayerNorm (bias, eps 1e-12) on their sum, post-LN
    encoder blocks with biases everywhere, exact GELU, 4 * dim feedforward, dropout 0.1, the
    output layer tied to the token embedding (the masked-LM decoder; BERT's extra dense +
    LayerNorm transform and output bias are not included). Call the model with
    ``embed_ids={"token_type": ids}``; ``return_only_embed=True`` gives the hidden states.
    """
    dim, depth, heads = _size(_BERT_SIZES, size, "bert")
    return {
        "num_tokens": num_tokens,
        "max_seq_len": max_seq_len,
        "embed_num_tokens": {"token_type": type_vocab_size},
        "post_emb_norm": True,
        "post_emb_norm_bias": True,
        "post_emb_norm_eps": 1e-12,
        "emb_dropout": 0.1,
        "tie_embedding": True,
        "dim": dim,
        "depth": depth,
        "heads": heads,
        "attn_dim_head": dim // heads,
        "pre_norm": False,
        "attn_qkv_bias": True,
        "attn_out_bias": True,
        "attn_dropout": 0.1,
        "norm_bias": True,
        "norm_eps": 1e-12,
        "ff_inner_dim": 4 * dim,
    }


def vit(
    size: str = "base",
    *,
    image_size: int = 224,
    patch_size: int = 16,
    num_classes: int | None = 1000,
    channels: int = 3,
) -> dict:
    """Vision transformer sizes of Dosovitskiy et al. 2020 (https://arxiv.org/abs/2010.11929,
    Table 1: Base = dim 768, 12 layers, 12 heads, MLP 3072; tiny/small from Touvron et al. 2020,
    https://arxiv.org/abs/2012.12877) with ViT's pre-LN blocks (LayerNorm with bias, eps 1e-6,
    biased projections, exact GELU). The wrapper is anyformer's ViTransformerWrapper, which
    follows SimpleViT (https://arxiv.org/abs/2205.01580): mean pooling instead of a class token,
    normalised patch embedding.
    """
    dim, depth, heads = _size(_VIT_SIZES, size, "vit")
    return {
        "image_size": image_size,
        "patch_size": patch_size,
        "channels": channels,
        "num_classes": num_classes,
        "dim": dim,
        "depth": depth,
        "heads": heads,
        "attn_dim_head": dim // heads,
        "attn_qkv_bias": True,
        "attn_out_bias": True,
        "norm_bias": True,
        "norm_eps": 1e-6,
        "ff_inner_dim": 4 * dim,
    }


def modern(
    dim: int = 512,
    depth: int = 8,
    heads: int = 8,
    kv_heads: int | None = None,
    *,
    num_tokens: int = 32000,
    max_seq_len: int = 2048,
    rope_theta: float = 10000.0,
) -> dict:
    """A small modern decoder-only LM, the recipe shared by Llama-style models (Llama 2,
    https://arxiv.org/abs/2307.09288; Mistral, https://arxiv.org/abs/2310.06825; Qwen2,
    https://arxiv.org/abs/2407.10671) at small scale: rotary positions over the full head
    width, pre-norm RMSNorm, SwiGLU (https://arxiv.org/abs/2002.05202) with 8/3 * dim hidden
    units rounded to a multiple of 64 (the parameter count of a 4 * dim MLP), no biases,
    optional grouped-query attention (``kv_heads``), and the head tied to the token embedding
    (as small models such as Qwen2-0.5B do, which saves num_tokens * dim parameters).
    """
    return {
        **_llama_style(dim, depth, heads, kv_heads, num_tokens, max_seq_len, rope_theta),
        "tie_embedding": True,
        "ff_inner_dim": llama_ff_width(dim, multiple_of=64),
    }


#: name -> (preset function, wrapper class name, stack class name)
PRESETS: dict[str, tuple[Callable[..., dict], str, str]] = {
    "gpt2": (gpt2, "TransformerWrapper", "Decoder"),
    "llama": (llama, "TransformerWrapper", "Decoder"),
    "bert": (bert, "TransformerWrapper", "Encoder"),
    "vit": (vit, "ViTransformerWrapper", "Encoder"),
    "modern": (modern, "TransformerWrapper", "Decoder"),
}


_VIT_KEYWORDS = tuple(f.name for f in dataclasses.fields(ViTConfig))


def _classes(name: str) -> tuple[type[nn.Module], type[nn.Module], tuple[str, ...]]:
    if name not in PRESETS:
        raise ValueError(f"presets: unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    _, wrapper, stack_name = PRESETS[name]
    keys = wrapper_keywords() if wrapper == "TransformerWrapper" else _VIT_KEYWORDS
    return getattr(wrappers, wrapper), getattr(stack, stack_name), keys


def split(name: str, keywords: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A preset's keywords -> (wrapper keywords, stack keywords)."""
    return split_keywords(keywords, _classes(name)[2])


def build(name: str, /, **arguments: Any) -> nn.Module:
    """Build the preset ``name`` called with ``arguments`` (its sizes and options).

    Big presets build fast on the meta device (``with torch.device("meta"): ...``), then
    ``to_empty`` + ``reset_parameters()`` where the memory is.
    """
    wrapper_cls, stack_cls, _ = _classes(name)
    wrapper_kw, stack_kw = split(name, PRESETS[name][0](**arguments))
    return wrapper_cls(**wrapper_kw, attn_layers=stack_cls(**stack_kw))
