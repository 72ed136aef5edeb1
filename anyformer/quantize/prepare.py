"""``prepare_for_decoding``: the model to decode with, in fewer bytes per weight.

- ``dtype="bf16"``: every floating weight in bfloat16 (2 bytes). On CPUs with AVX-512 BF16 the
  linear maps become :class:`~anyformer.quantize.bf16.PackedBf16Linear` (the same parameters,
  multiplied from oneDNN's packed layout): decoding reads half the bytes of fp32; the session
  gives the sampler fp32 logits.
- ``quantize="int4"``: weight-only groupwise int4 (4 bits plus a bf16-sized scale and zero per
  ``group_size`` inputs) for the linear maps, on aten's int4 CPU kernel (activations rounded to
  bf16 for it): the fastest CPU decoding here; see :mod:`anyformer.quantize.int4`.
- ``quantize="int8"``: weight-only int8 (per output row). A memory and disk format: aten's CPU
  kernel for it is slower than fp32 (see :mod:`anyformer.quantize.int8`).

The given model is never changed: a converted deep copy is returned (a snapshot of the model as
it is now: prepare again after training it further), or the model itself when nothing needs to
change. Validation bits per byte of the quick-start model (benchmarks/bench_lowp.py): bf16
+0.01%, int8 -0.01%, int4 +0.30% against fp32.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .bf16 import packed_bf16_supported
from .int4 import GROUP_SIZES
from .swap import METHODS, pack_bf16_linears, quantize_linears

__all__ = ["DTYPES", "prepare_for_decoding"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""Names of the float formats a model can decode in."""


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return None


def prepare_for_decoding(
    model: nn.Module,
    dtype: str | None = None,
    quantize: str | None = None,
    *,
    group_size: int = 32,
) -> nn.Module:
    """The model to decode with: ``model`` in float format ``dtype`` ("fp32", "bf16"; None: as
    it is) with its linear maps in weight format ``quantize`` ("int8", "int4"; None: float),
    ``group_size`` inputs per int4 scale. A converted copy when something must change (the
    given model is never changed), else ``model`` itself."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)} or None, got {dtype!r}")
    if quantize is not None and quantize not in METHODS:
        raise ValueError(f"quantize must be one of {METHODS} or None, got {quantize!r}")
    if quantize == "int4" and group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size!r}")
    target = None if dtype is None else DTYPES[dtype]
    final = target or _float_dtype(model)
    pack = final == torch.bfloat16 and packed_bf16_supported() and _has_plain_linear(model)
    if quantize is None and final == _float_dtype(model) and not pack:
        return model
    out = copy.deepcopy(model)
    if target is not None:
        out = out.to(target)
    if quantize is not None:
        quantize_linears(out, quantize, group_size)
    if pack:
        pack_bf16_linears(out)
    return out


def _has_plain_linear(model: nn.Module) -> bool:
    return any(type(m) is nn.Linear for m in model.modules())
