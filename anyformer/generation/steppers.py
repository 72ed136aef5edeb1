"""Steppers: one model run over a batch of prompts, then over the tokens appended to them.

Every decoding mode (sampling, contrastive, beam search, speculative) drives its models through
this interface:

- ``start()``: run the prompts, return the logits of the next token ``(b, vocab)``;
- ``feed(tokens)``: append ``(b, k)`` tokens, return their logits ``(b, k, vocab)``;
- ``truncate(num_new)``: forget every appended token after the first ``num_new``;
- ``reorder(rows)``: row ``i`` becomes old row ``rows[i]`` (beam search).

``CachedStepper`` keeps a :class:`KVCache` (each token is computed once); ``UncachedStepper``
recomputes the whole sequence at every call (models that cannot cache). Prompts of different
lengths are right-padded: their padding columns are masked, and new tokens take the positions
right after each row's own prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..cache import KVCache
from .prompts import positions

__all__ = ["CachedStepper", "Stepper", "UncachedStepper"]


class Stepper:
    """What both steppers share: the prompts, their lengths, the model keywords, a counter."""

    def __init__(
        self,
        forward: Callable[..., Tensor],
        prompts: Tensor,
        lens: Tensor | None,
        max_new: int,
        window: int | None,
        kwargs: dict[str, Any],
    ) -> None:
        self.forward = forward
        self.prompts = prompts
        self.lens = lens
        self.max_new = max_new
        self.window = window
        self.kwargs = dict(kwargs)
        self.num_prepended = _prepend_len(self.kwargs)
        self.num_new = 0  # tokens appended after the prompts so far

    @property
    def batch(self) -> int:
        return self.prompts.shape[0]

    @property
    def prompt_width(self) -> int:
        return self.prompts.shape[1]

    def start(self) -> Tensor:
        """Run the prompts; -> the logits of each row's next token (b, vocab)."""
        raise NotImplementedError

    def feed(self, tokens: Tensor) -> Tensor:
        """Append (b, k) tokens; -> their logits (b, k, vocab)."""
        raise NotImplementedError

    def _last_prompt_logits(self, logits: Tensor) -> Tensor:
        """The logits at each row's last prompt token."""
        if self.lens is None:
            return logits[:, -1]
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, self.num_prepended + self.lens - 1]

    def _check_chunk(self, k: int) -> None:
        if self.num_new + k > self.max_new:
            raise ValueError(
                f"cannot append {k} tokens: {self.num_new} of at most {self.max_new} are used"
            )
        if k > 1 and self.window is not None and self.prompt_width + self.num_new + k > self.window:
            raise ValueError(
                f"several tokens at once cannot pass max_seq_len={self.window}: each would need "
                "its own window (restrict_to_max_seq_len=False, or a shorter generation)"
            )

    def truncate(self, num_new: int) -> None:
        if not 0 <= num_new <= self.num_new:
            raise ValueError(f"truncate: num_new must be in [0, {self.num_new}], got {num_new}")
        self.num_new = num_new

    def reorder(self, rows: Tensor) -> None:
        """Select batch rows in every per-row state: prompts, lengths and model keywords."""
        old = self.batch
        self.prompts = self.prompts[rows]
        if self.lens is not None:
            self.lens = self.lens[rows]
        self.kwargs = {k: _select_rows(v, rows, old) for k, v in self.kwargs.items()}


def _prepend_len(kwargs: dict[str, Any]) -> int:
    embeds = kwargs.get("prepend_embeds")
    return 0 if embeds is None else embeds.shape[1]


def _select_rows(value: Any, rows: Tensor, batch: int) -> Any:
    """Index a per-row model keyword (context, context_mask, prepend_embeds, ...) by `rows`."""
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return value[rows]
    if isinstance(value, dict):
        return {k: _select_rows(v, rows, batch) for k, v in value.items()}
    return value


class CachedStepper(Stepper):
    """Runs each token once; keys/values of earlier tokens live in a preallocated KVCache."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # prepend_embeds / prepend_mask go in with the prompts only: the cache holds them after
        self.prepend = {
            k: self.kwargs.pop(k) for k in ("prepend_embeds", "prepend_mask") if k in self.kwargs
        }
        self.cache = KVCache(capacity=self.num_prepended + self.prompt_width + self.max_new)

    def start(self) -> Tensor:
        n = self.prompt_width
        mask = None
        if self.lens is not None:
            mask = torch.arange(n, device=self.prompts.device) < self.lens[:, None]
        logits = self.forward(
            self.prompts,
            mask=mask,
            cache=self.cache,
            input_not_include_cache=True,
            **self.prepend,
            **self.kwargs,
        )
        return self._last_prompt_logits(logits)

    def feed(self, tokens: Tensor) -> Tensor:
        k = tokens.shape[1]
        self._check_chunk(k)
        if k == 1:
            self._slide_window()
        pos = None
        if self.lens is not None:
            steps = torch.arange(self.num_new, self.num_new + k, device=tokens.device)
            pos = self.lens[:, None] + steps
        logits = self.forward(
            tokens, pos=pos, cache=self.cache, input_not_include_cache=True, **self.kwargs
        )
        self.num_new += k
        return logits

    def _slide_window(self) -> None:
        """Hide the keys that leave each row's max_seq_len window before the next token."""
        n, t = self.prompt_width, self.num_new
        if self.window is None or n + t + 1 <= self.window:
            return
        key_pos = positions(n, n + t, self.lens, self.prompts.device).expand(self.batch, -1)
        query = (n if self.lens is None else self.lens.view(-1, 1)) + t
        self.cache.restrict_keys(self.cache.num_prepended, key_pos >= query - self.window + 1)

    def truncate(self, num_new: int) -> None:
        super().truncate(num_new)
        # the cache's own count: prepended embeddings and memory tokens hold columns too
        self.cache.truncate(self.cache.num_prepended + self.prompt_width + num_new)

    def reorder(self, rows: Tensor) -> None:
        super().reorder(rows)
        self.cache.reorder(rows)


class UncachedStepper(Stepper):
    """Recomputes the whole (windowed) sequence at every call."""

    def __init__(self, *args: Any, pad_value: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        b, n = self.prompts.shape
        total = n + self.max_new
        self.tokens = self.prompts.new_full((b, total), pad_value)
        self.tokens[:, :n] = self.prompts
        self.full_mask: Tensor | None = None  # (b, total): prompt padding hidden
        self.full_pos: Tensor | None = None  # (b, total): each row's own positions
        if self.lens is not None:
            cols = torch.arange(total, device=self.prompts.device)
            self.full_mask = (cols < self.lens[:, None]) | (cols >= n)
            self.full_pos = positions(n, total, self.lens, self.prompts.device)

    def _run(self) -> Tensor:
        """Logits of every column so far, each row seen through its own window."""
        cur = self.prompt_width + self.num_new
        tokens, mask, pos = self.tokens[:, :cur], None, None
        if self.full_mask is not None and self.full_pos is not None:
            mask, pos = self.full_mask[:, :cur], self.full_pos[:, :cur]
        if self.window is not None and self.lens is None and cur > self.window:
            tokens = tokens[:, -self.window :]
        elif (
            self.window is not None
            and self.lens is not None
            and mask is not None
            and pos is not None
        ):
            # each row's window ends at its own last position, lens - 1 + num_new
            start = (self.lens - self.window + self.num_new).clamp(min=0).view(-1, 1)
            mask = mask & (pos >= start)
            pos = (pos - start).clamp(min=0)
        return self.forward(tokens, mask=mask, pos=pos, **self.kwargs)

    def start(self) -> Tensor:
        return self._last_prompt_logits(self._run())

    def feed(self, tokens: Tensor) -> Tensor:
        k = tokens.shape[1]
        self._check_chunk(k)
        at = self.prompt_width + self.num_new
        self.tokens[:, at : at + k] = tokens
        self.num_new += k
        return self._run()[:, -k:]

    def reorder(self, rows: Tensor) -> None:
        super().reorder(rows)
        self.tokens = self.tokens[rows]
        if self.full_mask is not None and self.full_pos is not None:
            self.full_mask, self.full_pos = self.full_mask[rows], self.full_pos[rows]
