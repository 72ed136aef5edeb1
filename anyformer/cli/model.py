"""The model a run trains: ``AutoregressiveWrapper(TransformerWrapper(..., attn_layers=Decoder(...)))``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

from torch import nn

from ..config.options import suggest
from ..data.corpus import VOCAB_SIZE
from .config import TRAIN_KEYS, TrainConfig, split_model_keywords, wrapper_keys
from .errors import CLIError

if TYPE_CHECKING:
    from ..wrappers.transformer import TransformerWrapper

__all__ = ["build_model", "check_model", "model_keywords", "net_of"]

_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")
_DID_YOU_MEAN = re.compile(r" Did you mean '([^']+)'\?")


def model_keywords(config: TrainConfig, model: dict[str, Any]) -> dict[str, Any]:
    """The model keywords with the byte-level defaults filled in (num_tokens, max_seq_len)."""
    out = {"num_tokens": VOCAB_SIZE, "max_seq_len": config.seq_len, **model}
    if not isinstance(out["num_tokens"], int) or out["num_tokens"] < VOCAB_SIZE:
        raise CLIError(
            f"num_tokens must be an int >= {VOCAB_SIZE} for bytes, got {out['num_tokens']!r}"
        )
    _check_byte_keywords(out)
    max_len = out["max_seq_len"]
    use_abs = out.get("use_abs_pos_emb", True) and not out.get("scaled_sinu_pos_emb", False)
    if isinstance(max_len, int) and use_abs and max_len < config.seq_len:
        raise CLIError(f"max_seq_len ({max_len}) must be >= seq_len ({config.seq_len})")
    return out


def _check_byte_keywords(model: dict[str, Any]) -> None:
    """Keywords a byte-level language model trained on bytes alone cannot take."""
    logits_dim = model.get("logits_dim")
    if logits_dim is not None and logits_dim != model["num_tokens"]:
        raise CLIError(
            f"logits_dim must be left unset (it is num_tokens = {model['num_tokens']} for a byte "
            f"language model, whose targets are its input ids), got {logits_dim!r}"
        )
    if model.get("embed_num_tokens"):
        raise CLIError(
            "embed_num_tokens is not supported by anyformer train (its extra embeddings need "
            f"embed_ids at every forward, which byte data has none of), got "
            f"{model['embed_num_tokens']!r}"
        )


def _model_error(e: Exception) -> CLIError:
    """A one-line error for a model keyword problem, with a did-you-mean over every key."""
    message = str(e)
    match = _UNEXPECTED.search(message)
    if match is None:
        return CLIError(f"model: {message}")
    name = match.group(1)
    hint = _DID_YOU_MEAN.search(message)
    tip = (
        f" Did you mean {hint.group(1)!r}?"
        if hint
        else suggest(name, [*TRAIN_KEYS, *wrapper_keys()])
    )
    return CLIError(f"unknown key {name!r}: neither a training option nor a model keyword.{tip}")


def build_model(config: TrainConfig, model: dict[str, Any]) -> nn.Module:
    """Build the (randomly initialised) language model; keyword errors raise CLIError."""
    from .. import AutoregressiveWrapper, Decoder, TransformerWrapper

    wrapper_kw, stack_kw = split_model_keywords(model_keywords(config, model))
    try:
        net = TransformerWrapper(**wrapper_kw, attn_layers=Decoder(**stack_kw))
    except (TypeError, ValueError, NotImplementedError) as e:
        raise _model_error(e) from e
    return AutoregressiveWrapper(net)


def check_model(config: TrainConfig, model: dict[str, Any]) -> dict[str, Any]:
    """Build the model (keyword errors raise CLIError) and return its ``config_dict()``."""
    return net_of(build_model(config, model)).config_dict()


def count_parameters(module: nn.Module) -> int:
    """Parameters counted once (tied weights once)."""
    return sum(p.numel() for p in module.parameters())


def net_of(lm: nn.Module) -> TransformerWrapper:
    """The ``TransformerWrapper`` inside a language model (``AutoregressiveWrapper.net``)."""
    return cast("TransformerWrapper", lm.net)
