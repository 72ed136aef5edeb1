"""Normalisation layers, built from a NormConfig."""

from __future__ import annotations

from torch import nn

from ..config.norm import NormConfig

__all__ = ["LayerNorm", "build_norm"]


class LayerNorm(nn.LayerNorm):
    """LayerNorm with a learned gain and, only when asked, a bias (the seed design has none)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__(dim, eps=eps, bias=bias)


_NORMS = {"layernorm": LayerNorm}


def build_norm(dim: int, config: NormConfig | None = None) -> nn.Module:
    """The norm a stack uses for every block, as its NormConfig says."""
    config = config or NormConfig()
    return _NORMS[config.kind](dim, eps=config.norm_eps, bias=config.norm_bias)
