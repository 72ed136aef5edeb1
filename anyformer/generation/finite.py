"""Non-finite logits stop decoding with an error naming the step, instead of garbage tokens.

``argmax`` over NaN logits picks the NaN (the same token forever) and a softmax over ``+inf`` is
NaN, so a model that overflows or was loaded with broken weights would otherwise emit fluent
garbage. A row's maximum is NaN if the row holds a NaN, ``+inf`` if it holds ``+inf`` and
``-inf`` if no token is left (``-inf`` alone is a masked token, which is allowed): one
reduction per step tells all three apart. The flags stay on the device and are read every
``every`` steps (one host sync for several tokens), and always before a result is returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["LogitGuard"]


@dataclass
class _Seen:
    step: int  # the step of the first column
    rows_per_prompt: int  # beam search: beams rows per prompt
    who: str
    maxima: Tensor  # (rows,) or (rows, k): k consecutive steps


@dataclass
class LogitGuard:
    """Watches the logits of one decoding call; ``verify`` raises at the first bad step.

    Steps count the new tokens from 0; the position is the predicted token's (its row's prompt
    length + step).
    """

    mode: str = "generate"
    prompt_width: int = 0
    prompt_lens: Tensor | None = None
    every: int = 1
    _seen: list[_Seen] = field(default_factory=list)

    def observe(
        self, logits: Tensor, step: int, rows_per_prompt: int = 1, who: str = "logits"
    ) -> None:
        """Record logits (rows, V) or (rows, k, V) of `step` (k steps from `step`): one
        reduction, no host sync until ``verify``."""
        self._seen.append(_Seen(step, rows_per_prompt, who, logits.detach().amax(dim=-1)))
        if len(self._seen) >= self.every:
            self.verify()

    def verify(self) -> None:
        """Raise a ValueError naming the first step whose logits are not usable (a host sync)."""
        if not self._seen:
            return
        seen, self._seen = self._seen, []
        maxima = seen[0].maxima if len(seen) == 1 else torch.cat([s.maxima.flatten() for s in seen])
        if bool(maxima.isfinite().all()):
            return
        first = next(s for s in seen if not bool(s.maxima.isfinite().all()))
        maxima = first.maxima if first.maxima.ndim == 2 else first.maxima[:, None]
        row, col = (int(i) for i in (~maxima.isfinite()).nonzero()[0])
        raise ValueError(self._message(first, row, first.step + col, float(maxima[row, col])))

    def _message(self, seen: _Seen, row: int, step: int, value: float) -> str:
        prompt = row // seen.rows_per_prompt
        start = self.prompt_width if self.prompt_lens is None else int(self.prompt_lens[prompt])
        if value != value:
            what = "NaN"
        elif value > 0:
            what = "+inf"
        else:
            what = "no finite value (every token is -inf)"
        return (
            f"{self.mode}: the {seen.who} at step {step} (position {start + step}, prompt "
            f"{prompt}) contain {what}; no token can be sampled from them (check the model's "
            "weights, its inputs, and that its dtype's range is not exceeded)"
        )
