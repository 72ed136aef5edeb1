"""The mixture-of-experts keywords of the feedforward (``ff_num_experts``, ``ff_top_k``, ...).

They are fields of :class:`~anyformer.config.feedforward.FeedForwardConfig` (so ``ff_*`` routes
them); the checks of how they combine, and the one-expert config every expert is built from,
live here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["EXPERT_FIELDS", "check_experts", "expert_config"]

_Config = TypeVar("_Config")

#: The FeedForwardConfig fields that describe the mixture (not one expert).
EXPERT_FIELDS = (
    "num_experts",
    "top_k",
    "num_shared_experts",
    "capacity_factor",
    "router_renormalize",
    "load_balance_loss_weight",
    "router_z_loss_weight",
)


def _defaults(config: Any) -> dict[str, Any]:
    """The default of every mixture field of the config's (FeedForwardConfig's) class."""
    return {f.name: f.default for f in dataclasses.fields(config) if f.name in EXPERT_FIELDS}


def check_experts(config: Any, p: str) -> None:
    """Ranges of the mixture options of a FeedForwardConfig, and no mixture option without
    ``num_experts > 1``. ``p``: the prefix the keywords are written with (``ff_``)."""
    owner = "FeedForward"
    for name, low in (("num_experts", 1), ("top_k", 1), ("num_shared_experts", 0)):
        if getattr(config, name) < low:
            raise ValueError(f"{owner}: {p}{name} must be >= {low}, got {getattr(config, name)}")
    for name in ("load_balance_loss_weight", "router_z_loss_weight"):
        if getattr(config, name) < 0:
            raise ValueError(f"{owner}: {p}{name} must be >= 0, got {getattr(config, name)}")
    cf = config.capacity_factor
    if cf is not None and not cf > 0:
        raise ValueError(
            f"{owner}: {p}capacity_factor must be > 0 (or None: no capacity), got {cf}"
        )
    if config.num_experts == 1:
        changed = [
            n
            for n, d in _defaults(config).items()
            if n != "num_experts" and getattr(config, n) != d
        ]
        if changed:
            raise ValueError(
                f"{owner}: {p}{changed[0]}={getattr(config, changed[0])!r} is a mixture-of-experts "
                f"option, which needs {p}num_experts > 1 (got {p}num_experts=1)"
            )
    elif config.top_k > config.num_experts:
        raise ValueError(
            f"{owner}: {p}top_k={config.top_k} routes each token to more experts than "
            f"{p}num_experts={config.num_experts}: top_k must be <= num_experts"
        )


def expert_config(config: _Config) -> _Config:
    """The options of one expert (a FeedForwardConfig): the feedforward's own, without the
    mixture's."""
    return dataclasses.replace(config, **_defaults(config))  # type: ignore[type-var]
