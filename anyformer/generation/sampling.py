"""The sampling loop: pick a token from the scores, feed it back, one step at a time.

The loops here are generators that yield one ``(b,)`` tensor of tokens per step, so that
``generate`` collects them and ``stream`` hands them out as they are made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .filters import sample
from .finite import LogitGuard

__all__ = ["Picker", "plain_tokens", "stop_at_eos"]


@dataclass
class Picker:
    """Turns logits into tokens: greedy at temperature 0, else filter + temperature + sample.

    ``guard`` watches the logits the decoding loops show it (``LogitGuard.observe``)."""

    temperature: float
    filter_fn: Callable[..., Tensor] | None = None
    filter_kwargs: dict[str, Any] = field(default_factory=dict)
    generator: torch.Generator | None = None
    guard: LogitGuard = field(default_factory=LogitGuard)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def filtered(self, logits: Tensor) -> Tensor:
        return logits if self.filter_fn is None else self.filter_fn(logits, **self.filter_kwargs)

    def __call__(self, logits: Tensor) -> Tensor:
        if self.greedy:
            return logits.argmax(dim=-1)
        return sample(self.filtered(logits), self.temperature, self.generator)

    def probs(self, logits: Tensor) -> Tensor:
        """The distribution ``__call__`` samples from (float32 or wider)."""
        scaled = self.filtered(logits).float() / self.temperature
        return scaled.softmax(dim=-1)


def plain_tokens(
    start: Callable[[], Tensor],
    step: Callable[[Tensor], Tensor],
    pick: Picker,
    seq_len: int,
) -> Iterator[Tensor]:
    """Yield `seq_len` tokens (b,): pick from `start()`, then from `step(token)` each time.

    The next token's logits are computed only when the consumer asks for the next token. Each
    step's logits go past ``pick.guard`` (non-finite logits raise, naming the step).
    """
    logits = start()
    for t in range(seq_len):
        pick.guard.observe(logits, t)
        token = pick(logits)
        yield token
        if t < seq_len - 1:
            logits = step(token)


def stop_at_eos(
    tokens: Iterator[Tensor], eos_token: int | None, pad_value: int, check_every: int
) -> Iterator[Tensor]:
    """Pad each row after its eos; stop once every row is done.

    Whether all rows are done is read from the device only every `check_every` steps (a host
    sync): the columns after the last eos are then cut by `trim_after_eos`.
    """
    if eos_token is None:
        yield from tokens
        return
    done = None
    for t, token in enumerate(tokens):
        if done is None:
            done = torch.zeros_like(token, dtype=torch.bool)
        token = token.masked_fill(done, pad_value)
        done = done | (token == eos_token)
        yield token
        if t % check_every == check_every - 1 and bool(done.all()):
            return


def trim_after_eos(out: Tensor, eos_token: int | None) -> Tensor:
    """Cut the columns after the step where the last row emitted eos (if every row did)."""
    if eos_token is None or out.shape[1] == 0:
        return out
    is_eos = out == eos_token
    if not bool(is_eos.any(dim=1).all()):
        return out
    last = int(is_eos.int().argmax(dim=1).max())
    return out[:, : last + 1]
