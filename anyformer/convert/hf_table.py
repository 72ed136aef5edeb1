"""Name tables between Hugging Face checkpoints and anyformer models, usable both ways.

A converter that describes its mapping as a list of :class:`TensorRule` (one anyformer tensor and
the Hugging Face tensors it is made of) and :class:`TiedCopy` (a Hugging Face tensor stored as a
copy of another, e.g. a tied LM head) loads with :func:`load_rules`; an exporter reads the same
table backwards with :meth:`TensorRule.to_hf`. Nothing here imports ``transformers``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .hf_base import UnsupportedHFModel, WeightLoader

__all__ = ["TensorRule", "TiedCopy", "load_rules"]


@dataclass(frozen=True)
class TensorRule:
    """anyformer tensor ``ours`` <- the Hugging Face tensors ``hf``.

    Several ``hf`` tensors are concatenated along dim 0 (fused q/k/v, the GLU's value and gate
    halves); ``rows`` gives each one's rows so that :meth:`to_hf` can split them back. ``scale``
    multiplies the value (a constant Hugging Face applies at run time, folded into a weight).
    ``patch = (channels, patch_size)`` marks a convolution weight (out, c, p, p) that anyformer
    holds as a linear over flattened patches, features in (p, p, c) order.
    """

    ours: str
    hf: tuple[str, ...]
    rows: tuple[int, ...] = ()
    scale: float = 1.0
    patch: tuple[int, int] | None = None

    def to_ours(self, tensors: Sequence[Tensor]) -> Tensor:
        """The anyformer tensor from the Hugging Face ones (in the order of ``hf``)."""
        value = tensors[0] if len(tensors) == 1 else torch.cat(list(tensors), dim=0)
        if self.patch is not None:
            value = value.permute(0, 2, 3, 1).reshape(value.shape[0], -1)
        if self.scale != 1.0:  # in float64, rounded once into the stored dtype
            value = value.double().mul(self.scale).to(value.dtype)
        return value

    def to_hf(self, tensor: Tensor) -> dict[str, Tensor]:
        """The Hugging Face tensors from the anyformer one (the inverse of :meth:`to_ours`)."""
        value = tensor
        if self.scale != 1.0:
            value = value.double().div(self.scale).to(tensor.dtype)
        if self.patch is not None:
            channels, p = self.patch
            value = value.reshape(value.shape[0], p, p, channels).permute(0, 3, 1, 2)
        if len(self.hf) == 1:
            return {self.hf[0]: value.contiguous()}
        parts = value.split(list(self.rows), dim=0)
        return {name: part.contiguous() for name, part in zip(self.hf, parts, strict=True)}


@dataclass(frozen=True)
class TiedCopy:
    """Hugging Face tensor ``hf`` is a copy of ``of`` (tied weights saved twice): loading checks
    the two are equal when both are stored; exporting writes ``of``'s value under ``hf``."""

    hf: str
    of: str


def load_rules(
    loader: WeightLoader, model: nn.Module, rules: Iterable[TensorRule | TiedCopy]
) -> None:
    """Copy each rule's tensors into ``model`` through ``loader`` (which checks shapes and that
    every tensor is used once)."""
    for rule in rules:
        if isinstance(rule, TiedCopy):
            _check_copy(loader, rule)
            continue
        value = rule.to_ours([loader.take(name) for name in rule.hf])
        loader.set(model.get_parameter(rule.ours), value, " + ".join(rule.hf))


def _check_copy(loader: WeightLoader, rule: TiedCopy) -> None:
    if not loader.has(rule.hf):
        return
    copy = loader.take(rule.hf)
    if loader.has(rule.of) and not torch.equal(copy, loader.take(rule.of)):
        raise UnsupportedHFModel(
            f"{loader.source}: tensor {loader.prefix + rule.hf!r} differs from "
            f"{loader.prefix + rule.of!r}, but the config ties them (a converted model holds one)"
        )
