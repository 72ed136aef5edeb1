"""Left-padded rows (``seq_start_pos``): row r's tokens begin at column seq_start_pos[r].

The columns before it are padding: they are hidden as keys, and every position is counted from
the row's first token, so a left-padded row computes what it computes alone. The cache remembers
``seq_start_pos`` from its first call, so later decoding steps need not pass it again.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_seq_start_pos", "left_padded"]


def check_seq_start_pos(seq_start_pos: Tensor, batch: int, width: int) -> None:
    """seq_start_pos must be a (batch,) integer tensor with values in [0, width)."""
    if (
        not isinstance(seq_start_pos, Tensor)
        or seq_start_pos.shape != (batch,)
        or seq_start_pos.is_floating_point()
        or seq_start_pos.dtype == torch.bool
    ):
        got = (
            f"{seq_start_pos.dtype} tensor of shape {tuple(seq_start_pos.shape)}"
            if isinstance(seq_start_pos, Tensor)
            else type(seq_start_pos).__name__
        )
        raise ValueError(f"seq_start_pos must be a ({batch},) integer tensor, got {got}")
    if seq_start_pos.numel() and not torch.compiler.is_compiling():
        lo, hi = (int(v) for v in torch.aminmax(seq_start_pos))
        if lo < 0 or hi >= width:
            raise ValueError(
                f"seq_start_pos must lie in [0, {width}) (each row keeps at least one token), "
                f"got values in [{lo}, {hi}]"
            )


def left_padded(
    seq_start_pos: Tensor, start: int, n: int, pos: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Columns start .. start + n - 1 of left-padded rows -> (positions (b, n), key mask (b, n)).

    Positions count from each row's first token (``pos`` - seq_start_pos when ``pos`` is given),
    0 on the padding; the key mask is False on the padding (and where ``mask`` is False).
    """
    cols = torch.arange(start, start + n, device=seq_start_pos.device)
    first = seq_start_pos.view(-1, 1).long()
    base = cols if pos is None else pos
    positions = (base - first).clamp(min=0)
    keep = cols >= first
    return positions, keep if mask is None else mask & keep
