"""Distribution of a training run over processes: the model wrapped in DistributedDataParallel
or sharded with FSDP2 under ``torchrun``, and its full (unsharded) states for a checkpoint."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .distributed import Dist
from .model import net_of

__all__ = ["full_model_state", "load_optimizer_state", "optimizer_state", "wrap_model"]


def _sharded(dist: Dist, config: TrainConfig) -> bool:
    return dist.enabled and config.fsdp


def wrap_model(lm: nn.Module, dist: Dist, config: TrainConfig) -> nn.Module:
    """DDP or FSDP2 under torchrun, then torch.compile if asked; ``lm`` itself with neither."""
    model: nn.Module = lm
    if _sharded(dist, config):
        from torch.distributed.fsdp import fully_shard

        for block in net_of(lm).attn_layers.layers:
            fully_shard(block)
        fully_shard(lm)
    elif dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = DistributedDataParallel(lm, device_ids=ids)
    if config.compile:
        model = torch.compile(model)  # type: ignore[assignment]  # a module, typed as a function
    return model


def full_model_state(lm: nn.Module, dist: Dist, config: TrainConfig) -> dict[str, Any] | None:
    """Under FSDP2 the gathered weights (collective: every process calls it), else None."""
    if not _sharded(dist, config):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_model_state_dict(lm, options=options))


def optimizer_state(
    lm: nn.Module, optimizer: torch.optim.Optimizer, dist: Dist, config: TrainConfig
) -> dict[str, Any]:
    """The optimizer's full state (gathered under FSDP2: every process calls it)."""
    if _sharded(dist, config):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return dict(get_optimizer_state_dict(lm, optimizer, options=options))
    return optimizer.state_dict()


def load_optimizer_state(
    lm: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    dist: Dist,
    config: TrainConfig,
) -> None:
    """Load a full optimizer state (sharded out again under FSDP2)."""
    if _sharded(dist, config):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(lm, optimizer, state, options=options)
    else:
        optimizer.load_state_dict(state)
