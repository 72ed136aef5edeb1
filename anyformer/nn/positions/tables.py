"""Position tables: buffers computed from positions that keep full precision.

Rotary frequencies and their cos/sin tables, xPos scales, ALiBi slopes and sinusoidal
frequencies are computed from the configuration, not learned. In bfloat16 they would be wrong
by far more than the activations' rounding (rotary cos at position 4000: 0.75 off), so they stay
float32 whatever the module dtype (float64 under ``.double()``), as Hugging Face does: the
angles are computed in float32 and only the final factors are cast to the activations' dtype.

``module.to(dtype)`` (and ``.half()``, ``.bfloat16()``, ...) casts every floating buffer;
:class:`PositionTables` recomputes its tables in the kept precision after such a cast.
Tables are always created as normal tensors, with inference mode off, so a table grown during
a ``torch.inference_mode()`` forward can be saved for backward by a later training step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["PositionTables", "table_dtype", "tables_mode"]


def table_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of tables in a module cast to ``dtype``: float64 stays, anything else is
    float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextmanager
def tables_mode() -> Iterator[None]:
    """No autograd and no inference mode: what creating or growing a table runs under."""
    with torch.no_grad(), torch.inference_mode(False):  # both traceable by torch.compile
        yield


class PositionTables(nn.Module):
    """A module whose non-persistent floating buffers are position tables of ``tables_dtype``.

    Subclasses implement :meth:`reset_tables`: recompute every table in ``tables_dtype`` on
    the tables' device. A cast of the module (``.to(dtype)``, ``.half()``, ``.double()``, ...)
    sets ``tables_dtype`` to :func:`table_dtype` of the new dtype and recomputes the tables;
    moves between devices keep them as they are.
    """

    tables_dtype: torch.dtype = torch.float32

    def reset_tables(self) -> None:
        """Recompute every table in ``tables_dtype`` (run under :func:`tables_mode`)."""
        raise NotImplementedError

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        super()._apply(fn, recurse)
        cast = next(
            (b.dtype for b in self._buffers.values() if b is not None and b.is_floating_point()),
            None,
        )
        if cast is not None and (cast != self.tables_dtype or cast != table_dtype(cast)):
            self.tables_dtype = table_dtype(cast)
            with tables_mode():
                self.reset_tables()
        return self
