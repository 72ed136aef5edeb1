"""Hugging Face rotary settings (``rope_parameters`` / ``rope_scaling``) -> anyformer keywords.

Reads transformers 5's ``rope_parameters`` or transformers 4's ``rope_theta`` + ``rope_scaling``
and returns the stack keywords (``rotary_pos_emb``, ``rotary_emb_dim``, ``rotary_theta``,
``rotary_interpolation_factor`` or ``rotary_scaling`` and its parameters). Supported rope types:
'default', 'linear' (position interpolation, https://arxiv.org/abs/2306.15595), 'llama3'
(https://arxiv.org/abs/2407.21783), 'yarn' (https://arxiv.org/abs/2309.00071), 'dynamic'
(dynamic NTK) and 'longrope' (https://arxiv.org/abs/2402.13753); any other type, and any
parameter the converter does not know, raises :class:`UnsupportedHFModel` naming it. Defaults
follow transformers' ``modeling_rope_utils``: yarn's factor and longrope's factor default to
``max_position_embeddings / original_max_position_embeddings``, yarn's attention factor to
``0.1 ln s + 1`` (or the ratio of the two ``mscale`` terms when both are given), and a
top-level ``original_max_position_embeddings`` (Phi-3) wins over the one in the rope dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .hf_base import HFConfig

__all__ = ["context_length", "rope_keywords"]

_TYPES = ("default", "linear", "llama3", "yarn", "dynamic", "longrope")
#: Keys of a rope dict the converter reads (the ones each type ignores are ignored, as there).
_KNOWN = {
    "rope_type", "type", "rope_theta", "partial_rotary_factor", "factor",
    "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
    "short_factor", "long_factor", "low_freq_factor", "high_freq_factor", "mscale",
    "mscale_all_dim", "truncate",
}  # fmt: skip


def _rope_dict(config: HFConfig) -> tuple[str, Mapping[str, Any], Any]:
    """(the key it came from, the rope dict, rope_theta)."""
    params = config.data.get("rope_parameters")
    if isinstance(params, Mapping):  # transformers 5
        return "rope_parameters", params, params.get("rope_theta", config.data.get("rope_theta"))
    scaling = config.data.get("rope_scaling") or {}  # transformers 4 (None: plain rotary)
    if not isinstance(scaling, Mapping):
        raise config.unsupported("rope_scaling", scaling, "expected a dict or null")
    return "rope_scaling", scaling, config.data.get("rope_theta")


def _rotary_dim(config: HFConfig, params: Mapping[str, Any], head_dim: int, partial: bool) -> int:
    factor = params.get("partial_rotary_factor", config.data.get("partial_rotary_factor"))
    if factor in (None, 1, 1.0):
        return head_dim
    if not partial:
        raise config.unsupported(
            "partial_rotary_factor", factor, f"{config.family} rotates every head dimension"
        )
    dim = int(head_dim * factor)
    if dim < 2 or dim % 2:
        raise config.unsupported(
            "partial_rotary_factor", factor, f"head_dim * factor = {dim} is not an even int >= 2"
        )
    return dim


def rope_keywords(config: HFConfig, head_dim: int, *, partial: bool = False) -> dict[str, Any]:
    """The anyformer rotary keywords of a Llama-style config; ``partial``: the family honours
    ``partial_rotary_factor`` (Phi-3), else a factor other than 1 raises."""
    key, params, theta = _rope_dict(config)
    unknown = sorted(set(params) - _KNOWN)
    if unknown:
        raise config.unsupported(
            f"{key}[{unknown[0]!r}]",
            params[unknown[0]],
            "a rope parameter the converter does not know",
        )
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _TYPES:
        raise config.unsupported(
            f"{key}['rope_type']", rope_type, f"implemented: {', '.join(map(repr, _TYPES))}"
        )
    dim = _rotary_dim(config, params, head_dim, partial)
    out: dict[str, Any] = {
        "rotary_pos_emb": True,
        "rotary_emb_dim": dim,
        "rotary_theta": float(10000.0 if theta is None else theta),
    }
    if rope_type == "linear":  # position interpolation: positions divided by the factor
        out["rotary_interpolation_factor"] = float(_need(config, key, params, "factor"))
    elif rope_type != "default":
        out.update(_SCALING[rope_type](config, key, params))
    return out


def _need(config: HFConfig, key: str, params: Mapping[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None:
        raise config.unsupported(
            f"{key}[{name!r}]", value, f"rope_type {params.get('rope_type')!r} requires it"
        )
    return value


def _original(config: HFConfig, params: Mapping[str, Any]) -> int:
    """original_max_position_embeddings: the top-level one (Phi-3), else the rope dict's, else
    max_position_embeddings (as transformers' standardize_rope_params)."""
    for value in (
        config.data.get("original_max_position_embeddings"),
        params.get("original_max_position_embeddings"),
        config.data.get("max_position_embeddings"),
    ):
        if value is not None:
            return int(value)
    raise config.unsupported("original_max_position_embeddings", None, "missing")


def _implicit_factor(config: HFConfig, params: Mapping[str, Any]) -> float:
    factor = params.get("factor")
    if factor is None:
        factor = config.get("max_position_embeddings") / _original(config, params)
    return float(factor)


def _llama3(config: HFConfig, key: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "rotary_scaling": "llama3",
        "rotary_scaling_factor": float(_need(config, key, params, "factor")),
        "rotary_original_max_seq_len": _original(config, params),
        "rotary_low_freq_factor": float(_need(config, key, params, "low_freq_factor")),
        "rotary_high_freq_factor": float(_need(config, key, params, "high_freq_factor")),
    }


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(config: HFConfig, key: str, params: Mapping[str, Any]) -> dict[str, Any]:
    factor = _implicit_factor(config, params)
    attn = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attn is None and mscale and mscale_all_dim:
        attn = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
    return {
        "rotary_scaling": "yarn",
        "rotary_scaling_factor": factor,
        "rotary_original_max_seq_len": _original(config, params),
        "rotary_yarn_beta_fast": float(params.get("beta_fast") or 32.0),
        "rotary_yarn_beta_slow": float(params.get("beta_slow") or 1.0),
        "rotary_yarn_truncate": bool(params.get("truncate", True)),
        "rotary_attn_factor": _yarn_mscale(factor) if attn is None else float(attn),
    }


def _dynamic(config: HFConfig, key: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "rotary_scaling": "dynamic",
        "rotary_scaling_factor": float(_need(config, key, params, "factor")),
        # transformers' dynamic NTK measures lengths against max_position_embeddings
        "rotary_original_max_seq_len": int(config.get("max_position_embeddings")),
    }


def _longrope(config: HFConfig, key: str, params: Mapping[str, Any]) -> dict[str, Any]:
    factor = _implicit_factor(config, params)
    original = _original(config, params)
    attn = params.get("attention_factor")
    if attn is None:
        attn = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {
        "rotary_scaling": "longrope",
        "rotary_scaling_factor": max(factor, 1.0),
        "rotary_original_max_seq_len": original,
        "rotary_attn_factor": float(attn),
        "rotary_short_factor": tuple(float(f) for f in _need(config, key, params, "short_factor")),
        "rotary_long_factor": tuple(float(f) for f in _need(config, key, params, "long_factor")),
    }


_SCALING = {"llama3": _llama3, "yarn": _yarn, "dynamic": _dynamic, "longrope": _longrope}


def context_length(max_position_embeddings: int, keywords: Mapping[str, Any]) -> int:
    """The converted model's max_seq_len: max_position_embeddings, times the factor for dynamic
    NTK (whose max_position_embeddings is the original length it extends)."""
    if keywords.get("rotary_scaling") == "dynamic":
        return math.ceil(max_position_embeddings * keywords["rotary_scaling_factor"])
    return max_position_embeddings
