"""Checks of the rotary context-extension keywords (``rotary_scaling`` and its parameters).

The fields live in :class:`~anyformer.config.positions.PositionConfig`; this module holds their
defaults, paper links and validation, so positions.py stays about the choice of scheme. The
frequency formulas themselves are in ``anyformer/nn/positions/rotary_scaling.py``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DYNAMIC_NTK",
    "LLAMA3",
    "LONGROPE",
    "SCALING_DEFAULTS",
    "SCALING_KINDS",
    "YARN",
    "check_scaling",
    "check_scaling_stack",
]

LLAMA3 = "https://arxiv.org/abs/2407.21783"
YARN = "https://arxiv.org/abs/2309.00071"
DYNAMIC_NTK = "https://www.reddit.com/r/LocalLLaMA/comments/14mrgpr/"
LONGROPE = "https://arxiv.org/abs/2402.13753"

SCALING_KINDS = ("llama3", "yarn", "dynamic", "longrope")

#: Every rotary_scaling keyword and its default (all must stay at it when scaling is off).
SCALING_DEFAULTS: dict[str, Any] = {
    "rotary_scaling": None,
    "rotary_scaling_factor": 1.0,
    "rotary_original_max_seq_len": None,
    "rotary_low_freq_factor": 1.0,
    "rotary_high_freq_factor": 4.0,
    "rotary_yarn_beta_fast": 32.0,
    "rotary_yarn_beta_slow": 1.0,
    "rotary_yarn_truncate": True,
    "rotary_attn_factor": None,
    "rotary_short_factor": None,
    "rotary_long_factor": None,
}

#: The parameters each kind reads (besides rotary_scaling and rotary_original_max_seq_len).
_USED_BY = {
    "llama3": ("rotary_scaling_factor", "rotary_low_freq_factor", "rotary_high_freq_factor"),
    "yarn": (
        "rotary_scaling_factor",
        "rotary_yarn_beta_fast",
        "rotary_yarn_beta_slow",
        "rotary_yarn_truncate",
        "rotary_attn_factor",
    ),
    "dynamic": ("rotary_scaling_factor",),
    "longrope": (
        "rotary_scaling_factor",
        "rotary_attn_factor",
        "rotary_short_factor",
        "rotary_long_factor",
    ),
}

_CANNOT_COMBINE = {
    "rotary_interpolation_factor": 1.0,
    "rotary_base_rescale_factor": 1.0,
    "rotary_xpos": False,
}


def _changed(config: Any, names: Any) -> list[str]:
    return [n for n in names if getattr(config, n) != SCALING_DEFAULTS[n]]


def check_scaling(config: Any, p: str) -> None:
    """Checks of the rotary_scaling keywords that need only the PositionConfig (``p``: how
    keywords are written here, e.g. 'dec_')."""
    kind = config.rotary_scaling
    if kind is None:
        changed = _changed(config, list(SCALING_DEFAULTS)[1:])
        if changed:
            raise ValueError(
                f"AttentionLayers: {p}{changed[0]} was set but {p}rotary_scaling=None (choose one "
                f"of {', '.join(repr(k) for k in SCALING_KINDS)})"
            )
        return
    if kind not in SCALING_KINDS:
        raise ValueError(
            f"AttentionLayers: {p}rotary_scaling must be None or one of "
            f"{', '.join(repr(k) for k in SCALING_KINDS)}, got {kind!r}"
        )
    allowed = _USED_BY[kind]
    unused = [n for n in _changed(config, list(SCALING_DEFAULTS)[2:]) if n not in allowed]
    unused = [n for n in unused if n != "rotary_original_max_seq_len"]
    if unused:
        raise ValueError(
            f"AttentionLayers: {p}{unused[0]} was set but {p}rotary_scaling={kind!r} does not "
            f"use it (it reads {', '.join(p + n for n in allowed)})"
        )
    for name, default in _CANNOT_COMBINE.items():
        if getattr(config, name) != default:
            raise ValueError(
                f"AttentionLayers: {p}{name} cannot be combined with {p}rotary_scaling={kind!r} "
                "(the scaling sets the frequencies itself)"
            )
    _check_values(config, kind, p)


def _check_values(config: Any, kind: str, p: str) -> None:
    original = config.rotary_original_max_seq_len
    if original is None or original < 1:
        raise ValueError(
            f"AttentionLayers: {p}rotary_scaling={kind!r} needs {p}rotary_original_max_seq_len "
            f"(the trained context length, an int >= 1), got {original!r}"
        )
    if config.rotary_scaling_factor < 1:
        raise ValueError(
            f"AttentionLayers: {p}rotary_scaling_factor must be >= 1, got "
            f"{config.rotary_scaling_factor}"
        )
    positive = ["rotary_yarn_beta_fast", "rotary_yarn_beta_slow", "rotary_low_freq_factor"]
    for name in positive:
        if not getattr(config, name) > 0:
            raise ValueError(f"AttentionLayers: {p}{name} must be > 0, got {getattr(config, name)}")
    if config.rotary_attn_factor is not None and not config.rotary_attn_factor > 0:
        raise ValueError(
            f"AttentionLayers: {p}rotary_attn_factor must be > 0, got {config.rotary_attn_factor}"
        )
    if kind == "llama3" and not config.rotary_high_freq_factor > config.rotary_low_freq_factor:
        raise ValueError(
            f"AttentionLayers: {p}rotary_high_freq_factor must be > {p}rotary_low_freq_factor "
            f"({config.rotary_low_freq_factor}), got {config.rotary_high_freq_factor}"
        )
    if kind == "longrope":
        for name in ("rotary_short_factor", "rotary_long_factor"):
            value = getattr(config, name)
            if value is None or not all(f > 0 for f in value):
                raise ValueError(
                    f"AttentionLayers: {p}rotary_scaling='longrope' needs {p}{name}, a tuple of "
                    f"positive numbers (one per rotated pair), got {value!r}"
                )


def check_scaling_stack(config: Any, rot_dim: int, p: str) -> None:
    """Checks that need the number of rotated features per head."""
    kind = config.rotary_scaling
    if kind == "longrope":
        for name in ("rotary_short_factor", "rotary_long_factor"):
            got = len(getattr(config, name))
            if got != rot_dim // 2:
                raise ValueError(
                    f"AttentionLayers: {p}{name} needs one factor per rotated pair "
                    f"({rot_dim // 2} for rotary_emb_dim={rot_dim}), got {got}"
                )
    if kind == "dynamic" and rot_dim <= 2:
        raise ValueError(
            f"AttentionLayers: {p}rotary_scaling='dynamic' raises the base to d / (d - 2), so it "
            f"needs more than 2 rotated features, got {p}rotary_emb_dim={rot_dim}"
        )
