"""Data for a run: the byte splits, the global batches each process takes its share of, evaluation.

Every optimizer step draws one *global* batch of ``batch_size`` random windows from a generator
seeded with the run's seed; process ``rank`` of ``world`` takes rows
``[rank * b, (rank + 1) * b)`` of it (``b = batch_size / world``) and cuts them into
``grad_accum`` micro-batches. So each process reads only its own shard, the data a step sees
does not depend on the number of processes, and the sampler's state is the data position.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.corpus import load_splits
from ..data.files import load_text_splits
from .config import TrainConfig
from .distributed import Dist
from .errors import CLIError

__all__ = ["BatchSampler", "RunData", "evaluate", "load_data", "windows"]

LN2 = math.log(2.0)


@dataclass(frozen=True)
class RunData:
    """The train and validation bytes of a run, and where they came from."""

    train: Tensor
    val: Tensor
    source: str


def load_data(config: TrainConfig, data: str | None = None) -> RunData:
    """The run's splits: ``data`` (or ``config.data``), else the built-in corpus."""
    path = data if data is not None else config.data
    try:
        if path is None:
            train, val = load_splits(config.val_fraction, config.max_bytes)
            source = "built-in corpus (Python docs and standard-library sources)"
        else:
            train, val = load_text_splits(path, config.val_fraction, config.max_bytes)
            source = str(path)
    except ValueError as e:
        raise CLIError(str(e)) from e
    for name, split in (("train", train), ("validation", val)):
        if split.numel() < config.seq_len + 1:
            raise CLIError(
                f"the {name} split of {source} has {split.numel()} bytes, fewer than "
                f"seq_len + 1 = {config.seq_len + 1}; use a smaller seq_len or more data"
            )
    return RunData(train, val, source)


def windows(data: Tensor, starts: Tensor, seq_len: int) -> Tensor:
    """Rows ``data[s : s + seq_len + 1]`` for each start, as a long tensor."""
    return data[starts[:, None] + torch.arange(seq_len + 1)].long()


def shard_sizes(config: TrainConfig, world: int) -> tuple[int, int]:
    """-> (rows per process, rows per micro-batch); raises unless the batch divides evenly."""
    parts = world * config.grad_accum
    if config.batch_size % parts:
        raise CLIError(
            f"batch_size ({config.batch_size}) must be divisible by processes x grad_accum "
            f"({world} x {config.grad_accum} = {parts})"
        )
    return config.batch_size // world, config.batch_size // parts


class BatchSampler:
    """Global batches of random windows from a seeded generator; its state is the data position."""

    def __init__(self, data: Tensor, config: TrainConfig, dist: Dist) -> None:
        self.data = data
        self.seq_len = config.seq_len
        self.batch_size = config.batch_size
        self.per_rank, self.micro = shard_sizes(config, dist.world)
        self.rank = dist.rank
        self.generator = torch.Generator().manual_seed(config.seed)

    def next_micro_batches(self) -> list[Tensor]:
        """This process's micro-batches of the next global batch."""
        starts = torch.randint(
            self.data.numel() - self.seq_len, (self.batch_size,), generator=self.generator
        )
        mine = starts[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        return [windows(self.data, s, self.seq_len) for s in mine.split(self.micro)]

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


def eval_starts(val: Tensor, config: TrainConfig) -> Tensor:
    """The fixed validation windows: ``eval_batches`` batches of ``batch_size`` (seed + 1)."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    n = val.numel() - config.seq_len
    return torch.randint(n, (config.eval_batches, config.batch_size), generator=generator)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    val: Tensor,
    config: TrainConfig,
    dist: Dist,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> float:
    """Mean validation loss (nats per byte) over the fixed windows, shared out over processes."""
    per_rank, micro = shard_sizes(config, dist.world)
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in eval_starts(val, config):
        mine = batch[dist.rank * per_rank : (dist.rank + 1) * per_rank]
        for starts in mine.split(micro):
            x = windows(val, starts, config.seq_len).to(device)
            with autocast():
                loss = model(x)
            total[0] += loss.double() * len(starts)
            total[1] += len(starts)
    model.train(was_training)
    dist.all_reduce_sum(total)
    return float(total[0] / total[1])
