"""Token shift: a layer's input channels in groups, group k taken from k positions away.

With shifts (0, 1, ..., s) (causal) or (-s, ..., s) (bidirectional) and width d, the first
len(shifts) groups of d // len(shifts) channels are shifted along the sequence by their amount
(zeros where no source position exists); the remaining d % len(shifts) channels stay. RWKV's
"time mix" in its simplest form (https://github.com/BlinkDL/RWKV-LM).

Under cached decoding the rows before the new ones come from the cache (``past``), so a cached
step equals the full forward (x-transformers 1.28.2 shifts the new rows only, which fills the
shifted groups of a decoded token with zeros).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cache import LayerKVCache

__all__ = ["ShiftTokens", "shift_amounts"]


def shift_amounts(shift: int, causal: bool) -> tuple[int, ...]:
    """x-transformers' shift ranges: 0..s for causal stacks, -s..s otherwise."""
    return tuple(range(0 if causal else -shift, shift + 1))


class ShiftTokens(nn.Module):
    """Shift channel groups of (b, n, d) along n; ``use_mask``: zero padded rows first (as
    x-transformers does for attention layers, not for feedforwards)."""

    def __init__(self, shifts: tuple[int, ...], use_mask: bool) -> None:
        super().__init__()
        self.shifts = tuple(shifts)
        self.use_mask = use_mask
        self.history = max(max(self.shifts), 0)  # rows of the past a cached step needs

    def extra_repr(self) -> str:
        return f"shifts={self.shifts}, use_mask={self.use_mask}"

    def forward(
        self, x: Tensor, mask: Tensor | None = None, cache: LayerKVCache | None = None
    ) -> Tensor:
        """x (b, n, d) -> shifted (b, n, d); ``mask`` (b, n) marks kept rows; ``cache`` stores
        the (masked) rows so later calls see the past."""
        if self.use_mask and mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)
        n = x.shape[1]
        full, start = x, 0
        if cache is not None:
            stored, _ = cache.update(x[:, None], x.new_empty(x.shape[0], 1, n, 0))
            start = max(stored.shape[2] - n - self.history, 0)
            full = stored[:, 0, start:]
            start = full.shape[1] - n  # rows of the past in front of x
        segments = len(self.shifts)
        size = x.shape[-1] // segments
        groups = full.split(size, dim=-1)
        shifted = [_shift(g, a, start, n) for g, a in zip(groups, self.shifts)]
        rest = [g[:, start:] for g in groups[segments:]]
        return torch.cat((*shifted, *rest), dim=-1)


def _shift(t: Tensor, amount: int, start: int, n: int) -> Tensor:
    """Rows start..start+n-1 of t shifted by `amount` (row i takes row i - amount, or zeros)."""
    if amount == 0:
        return t[:, start : start + n]
    before, after = max(amount, 0), max(-amount, 0)
    padded = F.pad(t, (0, 0, before, after))
    begin = start + after
    return padded[:, begin : begin + n]
