"""Batched sampling that stops computing rows once they have emitted eos.

Rows of a batch finish at different steps. Every ``drop_every`` steps (when ``generate`` reads
the done flags from the device anyway) the rows that have finished leave the stepper: its KV
cache, prompt lengths and per-row keywords keep only the rows still running, so later steps
cost what the unfinished rows cost. The logits of the remaining rows are scattered back into a
full-batch tensor before a token is picked, so the picker, the logit guard and the random
numbers of sampling see exactly the batch they would without dropping: greedy and sampled
tokens are those of the plain loop, row for row.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .sampling import Picker
from .steppers import Stepper

__all__ = ["DROP_EVERY", "shrinking_tokens"]

DROP_EVERY = 8
"""Steps between two looks at which rows are done (a host sync), in generate and stream alike,
so that both drop the same rows at the same steps."""


def _worth_dropping(num_done: int, num_rows: int) -> bool:
    """Compacting copies the cache once; it pays when an eighth of the rows (or one) is done."""
    return num_done >= max(1, num_rows // 8)


def shrinking_tokens(
    stepper: Stepper,
    pick: Picker,
    seq_len: int,
    eos_token: int,
    pad_value: int,
    stop_every: int,
    drop_every: int = DROP_EVERY,
) -> Iterator[Tensor]:
    """Yield up to `seq_len` tokens (b,), each row padded with `pad_value` after its eos.

    Stops once every row is done (read every `stop_every` steps); finished rows leave the
    stepper every `drop_every` steps (they must divide each other or be equal for the two
    checks to share a host sync; any values are correct).
    """
    logits = stepper.start()
    batch = logits.shape[0]
    alive: Tensor | None = None  # original indices of the stepper's rows (None: every row)
    done = torch.zeros(batch, dtype=torch.bool, device=logits.device)
    for t in range(seq_len):
        full = logits if alive is None else _scatter_rows(logits, alive, batch)
        pick.guard.observe(full, t)
        raw = pick(full)
        token = raw.masked_fill(done, pad_value)
        done = done | (token == eos_token)
        yield token
        if t == seq_len - 1:
            return
        if t % stop_every == stop_every - 1 and bool(done.all()):
            return
        if t % drop_every == drop_every - 1:
            alive = _drop_done(stepper, done, alive)
        fed = raw if alive is None else raw[alive]
        logits = stepper.feed(fed[:, None])[:, -1]


def _scatter_rows(logits: Tensor, alive: Tensor, batch: int) -> Tensor:
    """(rows, V) logits of the running rows -> (batch, V), zeros for the finished rows."""
    return logits.new_zeros(batch, logits.shape[-1]).index_copy_(0, alive, logits)


def _drop_done(stepper: Stepper, done: Tensor, alive: Tensor | None) -> Tensor | None:
    """Remove the stepper's finished rows when enough are; -> the new original-row indices."""
    rows_done = done if alive is None else done[alive]
    num_done = int(rows_done.sum())
    if not _worth_dropping(num_done, rows_done.shape[0]) or num_done == rows_done.shape[0]:
        return alive
    keep = (~rows_done).nonzero()[:, 0]
    stepper.reorder(keep)
    return keep if alive is None else alive[keep]
