"""Processes under ``torchrun``: rank, world size, device; gloo on CPU, NCCL on CUDA."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import CLIError

__all__ = ["Dist", "resolve_device", "setup_distributed"]


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world`` processes, on ``device``."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over processes (in place; a no-op in one process)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, obj: object) -> list[object]:
        if not self.enabled:
            return [obj]
        out: list[object] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def shutdown(self, synchronize: bool) -> None:
        """Leave the process group; ``synchronize`` (a normal end) first waits for every process.

        A rank that left while another was still busy (rank 0 plots and samples) aborted now and
        then under gloo ("terminate called without an active exception"); the ranks now leave
        together, after anything still holding the group has been collected.
        """
        if not (self.enabled and dist.is_initialized()):
            return
        gc.collect()
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's GPU) when present, else CPU; other names as given."""
    if name == "auto":
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup_distributed(device_name: str) -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)
