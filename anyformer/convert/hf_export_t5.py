"""anyformer -> Hugging Face ``T5EncoderModel`` (the inverse of :mod:`hf_t5` for the encoder).

A ``TransformerWrapper(return_only_embed=True)`` with an ``Encoder`` built as T5's
(``attn_scale=1.0``, ``use_rmsnorm``, ``rel_pos_bias``, ``ff_no_bias``, a ReLU or gated
feedforward, no absolute positions) is written with the import side's own name table
(:func:`anyformer.convert.hf_t5.t5_rules`, read backwards).

An ``XTransformer`` built as T5 (the same options on both sides, ``tie_token_emb=True``,
``max_seq_len=0``) is written as ``T5ForConditionalGeneration``. Untied heads (T5 v1.1 /
Flan-T5: ``dec_tie_embedding=False``) write ``tie_word_embeddings=False`` and an ``lm_head``.
A tied head is written as T5 v1.0 (``tie_word_embeddings=True, scale_decoder_outputs=True``,
which transformers 4 and 5 both read as "scale the decoder output by d_model ** -0.5"): the
decoder's final norm gain is divided by that scale, each float picked so that the import
(which folds the scale back in) reads the gain back bitwise. Where some gain has no such
float (d_model not a power of 4 and a gain the import never produced), the folder is written
with ``scale_decoder_outputs=False`` and the gain unchanged instead, which transformers 5 reads
exactly (transformers 4 ignores that key).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import hf_t5
from .hf_base import HFConfig
from .hf_export_base import HFExporter, configs
from .hf_table import TensorRule

__all__ = ["T5_ENCODER", "T5_SEQ2SEQ"]


def _feed_forward_proj(ff: Any) -> str:
    act = "relu" if ff.relu else "silu" if ff.swish else "gelu_new" if ff.gelu_tanh else "gelu"
    if ff.glu:  # 'gated-gelu' is read as the tanh GELU: the comparison refuses an exact one
        return "gated-gelu" if act.startswith("gelu") else f"gated-{act}"
    return act


def _config(net: nn.Module, head: str) -> dict[str, Any]:
    wrapper, stack = configs(net)
    ff, positions = stack.feedforward, stack.positions
    return {
        "model_type": "t5",
        "architectures": ["T5EncoderModel"],
        "vocab_size": wrapper.num_tokens,
        "d_model": stack.dim,
        "d_kv": stack.attention.dim_head,
        "d_ff": ff.inner_dim or int(stack.dim * ff.mult),
        "num_layers": stack.depth,
        "num_heads": stack.heads,
        "relative_attention_num_buckets": positions.rel_pos_num_buckets,
        "relative_attention_max_distance": positions.rel_pos_max_distance,
        "dropout_rate": stack.attention.dropout,
        "layer_norm_epsilon": stack.norm.eps,
        "feed_forward_proj": _feed_forward_proj(ff),
        "is_encoder_decoder": False,
        "use_cache": False,
        "pad_token_id": None,
        "eos_token_id": None,
    }


def _weights(net: nn.Module, head: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for rule in hf_t5.t5_rules(HFConfig(_config(net, head), "T5"), head):
        if isinstance(rule, TensorRule):  # TiedCopy: a second name Hugging Face ties itself
            out.update(rule.to_hf(net.get_parameter(rule.ours).detach()))
    return out


T5_ENCODER = HFExporter(
    family=hf_t5.FAMILY,
    architectures={"hidden": "T5EncoderModel"},
    config=_config,
    weights=_weights,
)


# --------------------------------------------------------------------- encoder-decoder


def _unscaled_gain(gain: Tensor, scale: float) -> Tensor | None:
    """A gain ``h`` with ``round(h * scale) == gain`` in ``gain``'s dtype (the import's
    :meth:`TensorRule.to_ours`), or None when some entry has no such value."""
    rule = TensorRule("gain", ("gain",), scale=scale)
    h = rule.to_hf(gain)["gain"]
    for _ in range(2):  # the rounded quotient is at most one step from a pre-image
        back = rule.to_ours([h])
        if torch.equal(back, gain):
            return h
        step = torch.where(back < gain, torch.inf, -torch.inf).to(h.dtype)
        h = torch.where(back == gain, h, torch.nextafter(h, step))
    return h if torch.equal(rule.to_ours([h]), gain) else None


def _decoder_gain(model: nn.Module) -> Tensor:
    return model.get_parameter("decoder.net.attn_layers.final_norm.weight").detach()


def _seq2seq_config(model: nn.Module, head: str) -> dict[str, Any]:
    x: Any = model
    config = _config(x.encoder, "hidden")
    decoder: Any = x.decoder.net
    tied = bool(decoder.config.tie_embedding)
    scaled = tied and _unscaled_gain(_decoder_gain(model), _model_dim(model) ** -0.5) is not None
    pad = x.config.pad_value
    config.update(
        architectures=["T5ForConditionalGeneration"],
        vocab_size=decoder.num_tokens,
        num_decoder_layers=decoder.get_submodule("attn_layers").config.depth,
        is_encoder_decoder=True,
        use_cache=True,
        tie_word_embeddings=tied,
        scale_decoder_outputs=scaled,
        pad_token_id=pad,
        decoder_start_token_id=pad,
    )
    return config


def _model_dim(model: nn.Module) -> int:
    x: Any = model
    return int(x.config.dim)


def _seq2seq_weights(model: nn.Module, head: str) -> dict[str, Tensor]:
    config = _seq2seq_config(model, head)
    out: dict[str, Tensor] = {}
    for rule in hf_t5.t5_rules(HFConfig(config, "T5"), head):
        if not isinstance(rule, TensorRule):  # tied copies: transformers ties them itself
            continue
        value = model.get_parameter(rule.ours).detach()
        if rule.scale != 1.0:  # the v1.0 output scale, folded into the final norm gain
            unscaled = _unscaled_gain(value, rule.scale)
            assert unscaled is not None  # _seq2seq_config wrote scale_decoder_outputs=False
            out.update({rule.hf[0]: unscaled.contiguous()})
        else:
            out.update(rule.to_hf(value))
    return out


T5_SEQ2SEQ = HFExporter(
    family=hf_t5.FAMILY,
    architectures={"lm": "T5ForConditionalGeneration"},
    config=_seq2seq_config,
    weights=_seq2seq_weights,
    model_class="XTransformer",
)
