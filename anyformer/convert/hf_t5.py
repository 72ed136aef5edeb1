"""T5 / Flan-T5 / mT5 (Hugging Face ``T5ForConditionalGeneration``, ``T5EncoderModel`` and the
``MT5`` classes) -> anyformer.

The model (Raffel et al. 2019, https://arxiv.org/abs/1910.10683): one token embedding shared by
the encoder, the decoder and (when tied) the LM head; no absolute positions; a T5 relative
position bias owned by the first layer of each stack and shared by all its self-attention layers
(bidirectional buckets in the encoder, causal ones in the decoder; none in cross-attention);
attention logits ``q.k`` without the 1/sqrt(d) scale (T5 folds it into the initialisation);
pre-norm blocks whose "LayerNorm" is an RMSNorm without mean subtraction (eps 1e-6); a ReLU
feedforward (T5 v1.0) or a gated-GELU one with the tanh approximation (T5 v1.1 / Flan-T5,
``feed_forward_proj="gated-gelu"``), no biases anywhere; a final RMSNorm on each side.

anyformer's equivalent is an :class:`~anyformer.XTransformer` (``T5EncoderModel``: a
``TransformerWrapper(return_only_embed=True)`` with an ``Encoder``) with ``attn_scale=1.0``
(the T5 bias is then added unscaled), ``use_rmsnorm=True``, ``rel_pos_bias=True``,
``ff_relu=True`` or ``ff_glu=True, ff_gelu_tanh=True``, ``ff_no_bias=True`` and
``tie_token_emb=True``. Decode from ``decoder_start_token_id`` (the pad token):
``model.generate(ids, start, n, mask=mask)`` with ``start`` a (b, 1) tensor of it.

The LM head: tied to the embedding unless the config says ``tie_word_embeddings=False`` or the
checkpoint stores an ``lm_head.weight`` that differs from ``shared.weight`` (Flan-T5 / T5 v1.1,
as transformers 5 decides). When Hugging Face scales the decoder output by ``d_model ** -0.5``
before the head (``scale_decoder_outputs``; in transformers 4: whenever the head is tied, T5
v1.0) the scale is folded into the decoder's final norm gain (a :class:`TensorRule` ``scale``).
Dropout (``dropout_rate``) is kept on the embeddings, the attention probabilities and the
feedforward hidden layer; T5's dropouts on each sublayer output are not reproduced (outputs
agree in eval mode, where converted models start).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .hf_base import HFConfig, HFFamily, WeightLoader
from .hf_table import TensorRule, TiedCopy, load_rules

__all__ = ["FAMILY", "MT5_FAMILY", "build", "load", "prepare", "t5_rules"]

# T5's dense activation -> the ff_* keyword (None: anyformer's default, the exact GELU)
_ACTIVATIONS = {
    "relu": "ff_relu",
    "gelu": None,
    "gelu_new": "ff_gelu_tanh",
    "gelu_pytorch_tanh": "ff_gelu_tanh",
    "silu": "ff_swish",
    "swish": "ff_swish",
}


def _feed_forward(config: HFConfig) -> tuple[bool, dict[str, Any]]:
    """(gated, ff_* keywords) from ``feed_forward_proj`` ('relu', 'gated-gelu', ...), read as
    Hugging Face does: 'gated-gelu' means the tanh-approximated GELU ('gelu_new')."""
    proj = config.get("feed_forward_proj", "relu")
    parts = proj.split("-") if isinstance(proj, str) else []
    gated = len(parts) == 2 and parts[0] == "gated"
    act = "gelu_new" if proj == "gated-gelu" else (parts[-1] if parts else None)
    if not (len(parts) == 1 or gated) or act not in _ACTIVATIONS:
        known = sorted({*_ACTIVATIONS, *(f"gated-{a}" for a in _ACTIVATIONS)})
        raise config.unsupported("feed_forward_proj", proj, f"supported: {', '.join(known)}")
    keyword = _ACTIVATIONS[act]
    ff: dict[str, Any] = {keyword: True} if keyword else {}
    return gated, {"ff_glu": True, **ff} if gated else ff


def _stack_keywords(config: HFConfig) -> dict[str, Any]:
    """The keywords both stacks share (without the enc_/dec_ side prefix)."""
    buckets = config.get("relative_attention_num_buckets", 32)
    distance = config.get("relative_attention_max_distance", 128)
    if not 4 <= buckets <= distance:
        raise config.unsupported(
            "relative_attention_num_buckets",
            buckets,
            f"anyformer's T5 bias needs 4 <= buckets <= relative_attention_max_distance={distance}",
        )
    dropout = float(config.value_or("dropout_rate", 0.0))
    _, ff = _feed_forward(config)
    return {
        "heads": config.get("num_heads"),
        "attn_dim_head": config.get("d_kv"),
        "attn_scale": 1.0,
        "attn_dropout": dropout,
        "use_rmsnorm": True,
        "norm_eps": float(config.value_or("layer_norm_epsilon", 1e-6)),
        "rel_pos_bias": True,
        "rel_pos_num_buckets": buckets,
        "rel_pos_max_distance": distance,
        "ff_inner_dim": config.get("d_ff"),
        "ff_no_bias": True,
        "ff_dropout": dropout,
        **ff,
    }


def prepare(config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    """The config with the head decided as transformers 5 does: untied when the checkpoint
    stores an ``lm_head.weight`` that differs from ``shared.weight``; ``scale_decoder_outputs``
    resolved first (transformers 4 configs: whenever ``tie_word_embeddings`` is not False)."""
    data = dict(config)
    if "scale_decoder_outputs" not in data:  # mT5 never scales (transformers 5)
        tied = data.get("tie_word_embeddings") is not False
        data["scale_decoder_outputs"] = data.get("model_type") != "mt5" and tied
    head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
    if head is not None and shared is not None and not _same(head, shared):
        data["tie_word_embeddings"] = False
    return data


def _same(a: Tensor, b: Tensor) -> bool:
    if a.is_meta or b.is_meta:
        return a is b
    return a.shape == b.shape and bool(torch.equal(a, b))


def _tied(config: HFConfig) -> bool:
    return config.value_or("tie_word_embeddings", True) is not False


def _scaled(config: HFConfig) -> bool:
    value = config.data.get("scale_decoder_outputs")
    return _tied(config) if value is None else bool(value)


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer XTransformer (T5EncoderModel: TransformerWrapper) with T5's structure."""
    from ..stack import Encoder
    from ..wrappers import TransformerWrapper, XTransformer

    config.require("is_decoder", (False,), False)
    stack = _stack_keywords(config)
    dim, vocab = config.get("d_model"), config.get("vocab_size")
    dropout = stack["attn_dropout"]
    if head == "hidden":
        return TransformerWrapper(
            num_tokens=vocab,
            max_seq_len=0,
            emb_dropout=dropout,
            return_only_embed=True,
            attn_layers=Encoder(dim=dim, depth=config.get("num_layers"), **stack),
        )
    depth = config.get("num_layers")
    sides = {"enc_": depth, "dec_": config.value_or("num_decoder_layers", depth)}
    keywords = {
        f"{side}{name}": value
        for side, side_depth in sides.items()
        for name, value in {
            **stack,
            "num_tokens": vocab,
            "max_seq_len": 0,
            "depth": side_depth,
            "emb_dropout": dropout,
        }.items()
    }
    return XTransformer(
        dim=dim,
        tie_token_emb=True,
        pad_value=config.value_or("pad_token_id", 0),
        dec_tie_embedding=_tied(config),
        **keywords,
    )


def _block_rules(
    config: HFConfig, layers: str, first: int, hf: str, kinds: str
) -> list[TensorRule]:
    """Rules of one T5 block: HF sublayers ``hf.layer.{j}`` -> anyformer blocks
    ``layers.{first + j}``; ``kinds`` names the sublayers ('a' self-, 'c' cross-attention,
    'f' feedforward)."""
    inner = config.get("num_heads") * config.get("d_kv")
    gated, _ = _feed_forward(config)
    d_ff = config.get("d_ff")
    rules = []
    for j, kind in enumerate(kinds):
        block, sub = f"{layers}.{first + j}.", f"{hf}.layer.{j}."
        rules.append(TensorRule(block + "pre_norm.weight", (sub + "layer_norm.weight",)))
        if kind in "ac":
            attn = sub + ("SelfAttention." if kind == "a" else "EncDecAttention.")
            names = tuple(f"{attn}{n}.weight" for n in "qkv")
            rules.append(TensorRule(block + "branch.qkv.to_qkv.weight", names, (inner,) * 3))
            rules.append(TensorRule(block + "branch.to_out.weight", (attn + "o.weight",)))
            continue
        ff = sub + "DenseReluDense."
        # anyformer's GLU projection holds (value, gate): T5's (wi_1, wi_0)
        wi = (ff + "wi_1.weight", ff + "wi_0.weight") if gated else (ff + "wi.weight",)
        rules.append(TensorRule(block + "branch.proj_in.weight", wi, (d_ff,) * len(wi)))
        rules.append(TensorRule(block + "branch.proj_out.weight", (ff + "wo.weight",)))
    return rules


def _stack_rules(
    config: HFConfig, ours: str, hf: str, depth: int, kinds: str, final_scale: float = 1.0
) -> list[TensorRule]:
    """Rules of one side: token bias, blocks, final norm; ``ours`` is the anyformer stack."""
    bias = f"{hf}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    rules = [TensorRule(f"{ours}.attn_bias.relative_attention_bias.weight", (bias,))]
    for i in range(depth):
        rules += _block_rules(config, f"{ours}.layers", i * len(kinds), f"{hf}.block.{i}", kinds)
    norm = f"{hf}.final_layer_norm.weight"
    rules.append(TensorRule(f"{ours}.final_norm.weight", (norm,), scale=final_scale))
    return rules


def t5_rules(config: HFConfig, head: str) -> list[TensorRule | TiedCopy]:
    """The full name table of a T5 checkpoint (``head``: 'lm' for T5ForConditionalGeneration,
    'hidden' for T5EncoderModel), after :func:`prepare`."""
    depth = config.get("num_layers")
    enc = "" if head == "hidden" else "encoder."
    rules: list[TensorRule | TiedCopy] = [
        TensorRule(f"{enc}token_emb.emb.weight", ("shared.weight",)),
        TiedCopy("encoder.embed_tokens.weight", "shared.weight"),
    ]
    rules += _stack_rules(config, f"{enc}attn_layers", "encoder", depth, "af")
    if head == "hidden":
        return rules
    scale = config.get("d_model") ** -0.5 if _scaled(config) else 1.0
    dec_depth = config.value_or("num_decoder_layers", depth)
    rules.append(TiedCopy("decoder.embed_tokens.weight", "shared.weight"))
    rules += _stack_rules(config, "decoder.net.attn_layers", "decoder", dec_depth, "acf", scale)
    if _tied(config):
        rules.append(TiedCopy("lm_head.weight", "shared.weight"))
    else:
        rules.append(TensorRule("decoder.net.to_logits.weight", ("lm_head.weight",)))
    return rules


def load(loader: WeightLoader, config: HFConfig, model: nn.Module, head: str) -> None:
    """Copy a T5 checkpoint's tensors into ``model`` (built by ``build``)."""
    load_rules(loader, model, t5_rules(config, head))


FAMILY = HFFamily(
    name="T5",
    model_types=("t5",),
    architectures={"T5ForConditionalGeneration": "lm", "T5EncoderModel": "hidden"},
    build=build,
    load=load,
    prefixes=("",),
    probe="shared.weight",
    # a cross-attention bias older checkpoints saved and Hugging Face never reads
    ignore=("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",),
    prepare=prepare,
)

#: mT5 (Xue et al. 2020, https://arxiv.org/abs/2010.11934): T5 v1.1's architecture (gated GELU,
#: separate head), whose decoder output is never rescaled.
MT5_FAMILY = HFFamily(
    name="mT5",
    model_types=("mt5",),
    architectures={"MT5ForConditionalGeneration": "lm", "MT5EncoderModel": "hidden"},
    build=build,
    load=load,
    prefixes=FAMILY.prefixes,
    probe=FAMILY.probe,
    ignore=FAMILY.ignore,
    prepare=prepare,
)
