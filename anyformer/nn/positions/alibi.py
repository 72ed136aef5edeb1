"""ALiBi: attention with linear biases (Press et al., https://arxiv.org/abs/2108.12409).

Head h adds ``-m_h * |i - j|`` to the logit of query i and key j. For n heads (a power of two)
the slopes are the geometric sequence ``m_h = 2 ** (-8 h / n)``, h = 1..n; otherwise the n' = the
largest power of two below n heads take the n'-head slopes and the others take every second
slope of the 2n'-head sequence (the paper's recipe). With ``alibi_num_heads < heads`` only the
first heads are biased (slope 0 for the rest).

With grouped-query attention (``kv_heads`` < heads) anyformer's query head o reads key/value head
o // (heads // kv_heads), where x-transformers' head t reads head t % kv_heads: head o then takes
the slope x-transformers gives its head (o % group) * kv_heads + o // group, so that the same
keywords compute the same function (and checkpoints convert).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .tables import PositionTables, tables_mode

__all__ = ["AlibiPositionalBias", "alibi_slopes", "check_head_positions"]


def alibi_slopes(heads: int) -> list[float]:
    """The paper's slopes for `heads` heads."""

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if heads & (heads - 1) == 0:
        return geometric(heads)
    lower = 2 ** math.floor(math.log2(heads))
    return geometric(lower) + geometric(2 * lower)[0::2][: heads - lower]


class AlibiPositionalBias(PositionTables):
    """(q_pos (b|1, i), k_pos (b|1, j)) -> additive bias (b|1, heads, i, j), in the slopes'
    precision (float32 whatever the module dtype; the attention mask casts the sum)."""

    slopes: Tensor  # a computed buffer (not saved)

    def __init__(
        self, heads: int, total_heads: int | None = None, kv_heads: int | None = None
    ) -> None:
        super().__init__()
        total_heads = heads if total_heads is None else total_heads
        if not 1 <= heads <= total_heads:
            raise ValueError(
                f"AlibiPositionalBias: heads must be in [1, total_heads={total_heads}], got {heads}"
            )
        self.heads, self.total_heads = heads, total_heads
        self.kv_heads = total_heads if kv_heads is None else kv_heads
        self.register_buffer("slopes", torch.empty(total_heads), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Recompute the slopes (a computed buffer: not saved, garbage after to_empty)."""
        values = alibi_slopes(self.heads) + [0.0] * (self.total_heads - self.heads)
        values = [values[t] for t in self.head_order]
        with tables_mode():
            self.slopes = torch.tensor(values, dtype=self.tables_dtype, device=self.slopes.device)

    @property
    def head_order(self) -> list[int]:
        """Our head o is x-transformers' head head_order[o] (see the module docstring)."""
        kv, group = self.kv_heads, self.total_heads // self.kv_heads
        return [(o % group) * kv + o // group for o in range(self.total_heads)]

    def reset_tables(self) -> None:
        self.reset_parameters()

    def forward(self, q_pos: Tensor, k_pos: Tensor, span: int | None = None) -> Tensor:
        """Positions (b|1, n) shared by the heads, or (b, heads, n) per ALiBi head (x-transformers
        2.x's custom positions: ALiBi head t reads row t; the other heads get no bias)."""
        distance = (k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)).abs()  # (b|1, [heads,] i, j)
        if q_pos.ndim == 3:
            pad = self.total_heads - self.heads
            distance = torch.nn.functional.pad(distance, (0, 0, 0, 0, 0, pad))
            order = torch.tensor(self.head_order, device=distance.device)
            distance = distance.index_select(1, order)
        else:
            distance = distance.unsqueeze(1)
        return -distance.to(self.slopes.dtype) * self.slopes.view(-1, 1, 1)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, total_heads={self.total_heads}, kv_heads={self.kv_heads}"


def check_head_positions(
    pos: Tensor, bias: nn.Module | None, b: int, n: int, refused: dict[str, bool]
) -> None:
    """Forward's ``pos`` of shape (b, heads, n): a row of positions per ALiBi head (x-transformers
    2.x's ``forward_custom_pos``), uncached; ``refused``: the options of this call that read
    one position per token (name -> whether it is on)."""
    if not isinstance(bias, AlibiPositionalBias):
        raise ValueError(
            f"pos of shape {tuple(pos.shape)} gives each ALiBi head its own positions: it "
            "needs alibi_pos_bias=True (else pos is (n,) or (b, n))"
        )
    if tuple(pos.shape) != (b, bias.heads, n):
        raise ValueError(
            f"pos with one row of positions per ALiBi head must have shape ({b}, "
            f"alibi_num_heads={bias.heads}, {n}), got {tuple(pos.shape)}"
        )
    if pos.is_complex() or pos.dtype == torch.bool:
        raise ValueError(f"pos must hold real positions, got {pos.dtype}")
    for name, on in refused.items():
        if on:
            raise ValueError(
                f"pos of shape (b, alibi_num_heads, n) (positions per ALiBi head) cannot be "
                f"combined with {name}"
            )
