"""Checkpointing a training run: the trainer's state (optimizer, schedule, data position, random
generators), restoring it, and writing the checkpoint of a step (rank 0 writes, all take part)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from .checkpoint import write_checkpoint
from .errors import CLIError
from .model import build_model
from .parallel import full_model_state, load_optimizer_state, optimizer_state

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["restore_state", "save_checkpoint", "trainer_state"]


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def trainer_state(t: Trainer) -> dict[str, Any]:
    """Everything but the weights (collective under FSDP: every process calls it)."""
    return {
        "step": t.step,
        "tokens": t.tokens,
        "train_seconds": t.train_seconds,
        "optimizer": optimizer_state(t.lm, t.optimizer, t.dist, t.config),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "sampler": t.sampler.state_dict(),
        "rng": t.dist.all_gather_object(_rng_state(t.device)),
        "world": t.dist.world,
        "anyformer_version": __version__,
    }


def _restore_rng(t: Trainer, rngs: list[dict[str, Any]]) -> None:
    if len(rngs) == t.dist.world:
        rng = rngs[t.dist.rank]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and t.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], t.device)
    else:  # another number of processes: fresh draws for dropout
        torch.manual_seed(t.config.seed + 104729 * t.step + t.dist.rank)


def restore_state(t: Trainer, state: dict[str, Any]) -> None:
    """Optimizer, scheduler, data position and RNG state of a checkpoint."""
    load_optimizer_state(t.lm, t.optimizer, state["optimizer"], t.dist, t.config)
    t.scheduler.load_state_dict(state["scheduler"])
    t.scaler.load_state_dict(state["scaler"])
    t.sampler.load_state_dict(state["sampler"])
    t.step, t.tokens = int(state["step"]), int(state["tokens"])
    t.train_seconds = float(state["train_seconds"])
    _restore_rng(t, state["rng"])


def _write(t: Trainer, full: dict[str, Any] | None, state: dict[str, Any]) -> Path:
    """Rank 0: write the checkpoint folder of the current step."""
    lm = t.lm
    if full is not None:
        lm = build_model(t.config, t.plan.model)
        lm.load_state_dict(full)
    train_config = {"train": dataclasses.asdict(t.config), "model": t.plan.model}
    if t.claim is None:  # pragma: no cover - rank 0 always holds the claim
        raise RuntimeError("the run folder is not claimed")
    try:
        return write_checkpoint(
            t.run_dir, t.step, lm, state, train_config, t.config.keep_checkpoints, t.claim.manifest
        )
    except OSError as e:
        raise CLIError(
            f"cannot write the checkpoint of step {t.step} in '{t.run_dir}': "
            f"{e.strerror or e}; the earlier checkpoints are intact",
            exit_code=1,
        ) from e


def save_checkpoint(t: Trainer) -> Path | None:
    """Write the checkpoint of the current step (rank 0 writes; all take part)."""
    full = full_model_state(t.lm, t.dist, t.config)
    state = trainer_state(t)
    path = _write(t, full, state) if t.dist.is_main else None
    t.dist.barrier()
    t.saved_step = t.step
    return path
