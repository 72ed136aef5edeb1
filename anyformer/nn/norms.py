"""Normalisation layers, built from a NormConfig: LayerNorm, RMSNorm, ScaleNorm, SimpleRMSNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config.norm import NormConfig
from .adaptive_norm import AdaptiveLayerNorm, AdaptiveRMSNorm
from .dyt import DynamicTanh

__all__ = ["LayerNorm", "RMSNorm", "ScaleNorm", "SimpleRMSNorm", "build_norm"]


class LayerNorm(nn.LayerNorm):
    """LayerNorm with a learned gain and, only when asked, a bias (the seed design has none)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__(dim, eps=eps, bias=bias)


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim, computed in float32 at least."""
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(dtype)
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))


class RMSNorm(nn.Module):
    """x / rms(x) * g, with a learned per-channel gain g (https://arxiv.org/abs/1910.07467)."""

    def __init__(self, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(self._gain_size(dim)))
        self.reset_parameters()

    @staticmethod
    def _gain_size(dim: int) -> int:
        return dim

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return rms_normalize(x, self.eps) * self.weight


class ScaleNorm(RMSNorm):
    """x / rms(x) * g with one learned scalar g (Transformers without Tears,
    https://arxiv.org/abs/1910.05895; the paper's g = sqrt(dim) * this g)."""

    @staticmethod
    def _gain_size(dim: int) -> int:
        return 1


class SimpleRMSNorm(nn.Module):
    """x / rms(x), no learned gain (TransNormer, https://arxiv.org/abs/2307.14995)."""

    def __init__(self, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_normalize(x, self.eps)


def build_norm(dim: int, config: NormConfig | None = None) -> nn.Module:
    """The norm a stack uses for every block, as its NormConfig says (adaptive norms take
    ``(x, condition)``, the others ``x``)."""
    config = config or NormConfig()
    kind = config.kind
    if kind == "layernorm":
        return LayerNorm(dim, eps=config.eps, bias=config.norm_bias)
    if kind in ("adaptive_layernorm", "adaptive_rmsnorm", "dynamic_tanh"):
        return _build_other_norm(dim, config)
    cls = {"rmsnorm": RMSNorm, "scalenorm": ScaleNorm, "simple_rmsnorm": SimpleRMSNorm}[kind]
    return cls(dim, eps=config.eps)


def _build_other_norm(dim: int, config: NormConfig) -> nn.Module:
    if config.kind == "dynamic_tanh":
        return DynamicTanh(dim, config.dynamic_tanh_init_alpha)
    cls = AdaptiveLayerNorm if config.kind == "adaptive_layernorm" else AdaptiveRMSNorm
    return cls(dim, config.dim_condition, eps=config.eps)
