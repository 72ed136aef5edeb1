"""Normalisation layers."""

from __future__ import annotations

from torch import nn

__all__ = ["LayerNorm", "build_norm"]


def LayerNorm(dim: int) -> nn.LayerNorm:
    """Bias-less LayerNorm (a learned gain only), the seed design's default norm."""
    return nn.LayerNorm(dim, bias=False)


def build_norm(dim: int) -> nn.Module:
    """The norm a stack uses for every block (later milestones add RMSNorm, ScaleNorm, ...)."""
    return LayerNorm(dim)
