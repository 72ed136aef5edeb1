"""Swapping a model's linear maps for quantized ones, and the record of it a model folder keeps.

A model folder of a quantized model has a ``"quantize"`` entry in its ``config.json``:
``{"method": "int8" | "int4", "group_size": int | None, "modules": [names]}``. Loading builds
the float model from its config, then puts empty quantized maps at those names (shapes, bias and
dtype from the linear they replace) before the weights are checked and loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .bf16 import PackedBf16Linear
from .int4 import Int4Linear
from .int8 import Int8Linear

__all__ = [
    "METHODS",
    "OWN_KERNEL_TYPES",
    "QUANTIZED_TYPES",
    "pack_bf16_linears",
    "quantize_entry",
    "quantize_linears",
    "restore_quantized",
]

METHODS = ("int8", "int4")
"""Weight formats: int8 (per output row) and int4 (groupwise)."""

QUANTIZED_TYPES: tuple[type[nn.Module], ...] = (Int8Linear, Int4Linear)

OWN_KERNEL_TYPES: tuple[type[nn.Module], ...] = (*QUANTIZED_TYPES, PackedBf16Linear)
"""Linear maps that bring their own decoding kernel (the session's loop calls them as they are)."""


def _shared(model: nn.Module) -> set[int]:
    """ids of parameters reachable under more than one name (tied weights)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    owner_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner_name), attr, module)


def quantize_linears(model: nn.Module, method: str, group_size: int = 32) -> list[str]:
    """Swap (in place) every ``nn.Linear`` of ``model`` whose weight is not tied to another
    parameter (and, for int4, whose input width is a multiple of ``group_size``) for its
    quantized form; returns their names. Callers pass a copy (see prepare_for_decoding)."""
    shared = _shared(model)
    names = []
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Linear or id(m.weight) in shared:
            continue
        if method == "int8":
            _set(model, name, Int8Linear.from_linear(m))
        elif m.in_features % group_size == 0:
            _set(model, name, Int4Linear.from_linear(m, group_size))
        else:
            continue
        names.append(name)
    return names


def pack_bf16_linears(model: nn.Module) -> list[str]:
    """Swap (in place) every ``nn.Linear`` with a bf16 weight for a PackedBf16Linear holding the
    same parameters; returns their names."""
    names = []
    for name, m in list(model.named_modules()):
        if type(m) is nn.Linear and m.weight.dtype == torch.bfloat16:
            _set(model, name, PackedBf16Linear.from_linear(m))
            names.append(name)
    return names


def quantize_entry(model: nn.Module) -> dict[str, Any] | None:
    """The ``"quantize"`` entry of a model folder's config.json (None: nothing is quantized)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZED_TYPES)]
    if not found:
        return None
    kinds = {type(m) for _, m in found}
    if len(kinds) > 1:
        raise ValueError(
            "save_pretrained: a model folder holds one quantized format, got int8 and int4"
        )
    sizes = {getattr(m, "group_size", None) for _, m in found}
    if len(sizes) > 1:
        raise ValueError(f"save_pretrained: int4 maps of several group sizes {sizes}")
    return {
        "method": "int8" if kinds == {Int8Linear} else "int4",
        "group_size": sizes.pop(),
        "modules": [n for n, _ in found],
    }


def restore_quantized(model: nn.Module, entry: Any, where: str = "config.json") -> None:
    """Put empty quantized maps where ``entry`` (a config's "quantize" entry) says; ValueError
    naming ``where`` if the entry is malformed or names no linear map of the model."""
    if entry is None:
        return
    if not isinstance(entry, dict) or entry.get("method") not in METHODS:
        raise ValueError(
            f"{where}: 'quantize' must be an object with a method in {METHODS}, got {entry!r}"
        )
    names = entry.get("modules")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"{where}: 'quantize.modules' must be a list of module names, got {names!r}"
        )
    for name in names:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            m = None
        if type(m) is not nn.Linear:
            raise ValueError(
                f"{where}: 'quantize.modules' names {name!r}, not a linear map of the model"
            )
        w = m.weight
        if entry["method"] == "int8":
            q: nn.Module = Int8Linear(
                m.in_features, m.out_features, m.bias is not None, w.device, w.dtype
            )
        else:
            size = entry.get("group_size")
            try:
                if not isinstance(size, int) or isinstance(size, bool):
                    raise ValueError(f"group_size must be an integer, got {size!r}")
                q = Int4Linear(
                    m.in_features, m.out_features, m.bias is not None, size, w.device, w.dtype
                )
            except ValueError as e:
                raise ValueError(f"{where}: 'quantize' entry for {name!r}: {e}") from None
        _set(model, name, q)
