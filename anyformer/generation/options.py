"""Options of the autoregressive wrapper and of its decoding modes, as frozen dataclasses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..config.options import check_fields, option, unknown_keyword

__all__ = ["ContrastiveConfig", "WrapperOptions", "parse_contrastive"]


@dataclass(frozen=True)
class WrapperOptions:
    """What ``AutoregressiveWrapper(net, ...)`` accepts besides the net."""

    ignore_index: int = option(-100, "target value the loss skips; padding from `lens` gets it")
    pad_value: int = option(0, "token fed in place of ignore_index, and written after eos")
    mask_prob: float = option(
        0.0,
        "forgetful causal masking: fraction of keys hidden at random while training",
        "https://arxiv.org/abs/2210.13432",
    )
    add_attn_z_loss: bool = option(
        False, "add the attention z-loss to the loss", "https://arxiv.org/abs/2202.08906"
    )

    def __post_init__(self) -> None:
        check_fields(self, "AutoregressiveWrapper")
        if not 0.0 <= self.mask_prob < 1.0:
            raise ValueError(
                f"AutoregressiveWrapper: mask_prob must be in [0, 1), got {self.mask_prob}"
            )


@dataclass(frozen=True)
class ContrastiveConfig:
    """One amateur's contrastive-decoding parameters (O'Brien & Lewis 2023, Algorithm 2)."""

    alpha: float = option(
        0.1,
        "plausibility cut-off: keep tokens with p_expert >= alpha * max p_expert",
        "https://arxiv.org/abs/2210.15097",
    )
    beta: float = option(
        0.5,
        "score = (1 + beta) * expert logits - beta * amateur logits",
        "https://arxiv.org/abs/2309.09117",
    )

    def __post_init__(self) -> None:
        check_fields(self, "contrastive_decode_kwargs")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(
                f"contrastive_decode_kwargs: alpha must be in (0, 1], got {self.alpha}"
            )
        if not (self.beta >= 0.0 and math.isfinite(self.beta)):
            raise ValueError(
                f"contrastive_decode_kwargs: beta must be a finite number >= 0, got {self.beta}"
            )


def _one_contrastive(kwargs: Any) -> ContrastiveConfig:
    if isinstance(kwargs, ContrastiveConfig):
        return kwargs
    if not isinstance(kwargs, Mapping):
        raise TypeError(
            "contrastive_decode_kwargs must be a dict (alpha=..., beta=...) or a tuple of them, "
            f"got {type(kwargs).__name__}"
        )
    names = [f.name for f in fields(ContrastiveConfig)]
    for name in kwargs:
        if name not in names:
            raise unknown_keyword("contrastive_decode_kwargs", name, names)
    return ContrastiveConfig(**kwargs)


def parse_contrastive(kwargs: Any, num_amateurs: int) -> tuple[ContrastiveConfig, ...]:
    """One ContrastiveConfig per amateur: a single dict applies to every amateur."""
    if kwargs is None:
        return (ContrastiveConfig(),) * num_amateurs
    if isinstance(kwargs, (tuple, list)):
        if len(kwargs) != num_amateurs:
            raise ValueError(
                f"contrastive_decode_kwargs: got {len(kwargs)} dicts for {num_amateurs} amateur "
                "model(s); give one dict, or one per amateur"
            )
        return tuple(_one_contrastive(k) for k in kwargs)
    return (_one_contrastive(kwargs),) * num_amateurs
