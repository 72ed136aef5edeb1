"""Differential attention (DIFF Transformer, Ye et al. 2024, https://arxiv.org/abs/2410.05258).

Each head's query and key are two sub-heads of width d (``dim_head``): (q1 | q2), (k1 | k2); its
value has width ``value_dim`` (default 2 d). The head output is

    (1 - lambda_init) * RMSNorm( softmax(q1 k1^T / sqrt(d)) v - lambda * softmax(q2 k2^T / sqrt(d)) v )

with lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init (four learned d-vectors per layer,
N(0, 0.1^2) at init) and lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)) for the layer at depth l
(1-based). The RMSNorm (eps 1e-5) normalises every head on its own, with one learned gain of
width value_dim shared by the heads (the paper's GroupNorm). Both maps run on the fused kernel
(two calls, one per sub-head); the KV cache holds each key head as (k1 | k2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DifferentialHeads", "SubheadRotary", "lambda_init"]


def lambda_init(layer: int) -> float:
    """0.8 - 0.6 exp(-0.3 (layer - 1)), layer the 1-based depth."""
    return 0.8 - 0.6 * math.exp(-0.3 * (layer - 1))


class DifferentialHeads(nn.Module):
    """The two softmax maps of every head, subtracted, normalised and scaled."""

    def __init__(self, dim_head: int, value_dim: int, layer: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        if layer < 1:
            raise ValueError(f"DifferentialHeads: layer is the 1-based depth, got {layer}")
        self.dim_head, self.layer, self.eps = dim_head, layer, eps
        self.lambda_init = lambda_init(layer)
        self.lambda_q1 = nn.Parameter(torch.empty(dim_head))
        self.lambda_k1 = nn.Parameter(torch.empty(dim_head))
        self.lambda_q2 = nn.Parameter(torch.empty(dim_head))
        self.lambda_k2 = nn.Parameter(torch.empty(dim_head))
        self.gain = nn.Parameter(torch.empty(value_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, std=0.1)
        nn.init.ones_(self.gain)

    def lam(self) -> Tensor:
        """The learned lambda (a scalar tensor)."""
        first = torch.exp((self.lambda_q1 * self.lambda_k1).sum())
        second = torch.exp((self.lambda_q2 * self.lambda_k2).sum())
        return first - second + self.lambda_init

    def combine(self, out1: Tensor, out2: Tensor) -> Tensor:
        """(b, h, n, d_v) outputs of the two maps -> the heads' outputs."""
        diff = out1 - self.lam().to(out1.dtype) * out2
        rms = torch.rsqrt(diff.pow(2).mean(-1, keepdim=True) + self.eps)
        return diff * rms * self.gain.to(diff.dtype) * (1.0 - self.lambda_init)

    def forward(
        self, attend: nn.Module, q: Tensor, k: Tensor, v: Tensor, plan: Any, return_attn: bool
    ) -> tuple[Tensor, Any]:
        """q (b, h, i, 2d), k (b, kvh, j, 2d), v (b, kvh, j, d_v) -> (b, h, i, d_v) and the first
        map's intermediates (the explicit path's, or None)."""
        d = self.dim_head
        out1, inter = attend(q[..., :d], k[..., :d], v, plan, return_attn=return_attn)
        out2, _ = attend(q[..., d:], k[..., d:], v, plan, return_attn=False)
        return self.combine(out1, out2), inter

    def extra_repr(self) -> str:
        return f"dim_head={self.dim_head}, layer={self.layer}, lambda_init={self.lambda_init:.4f}"


class SubheadRotary(nn.Module):
    """A rotary position module applied to each sub-head (width d) of (b, h, n, 2d) heads."""

    def __init__(self, position: nn.Module) -> None:
        super().__init__()
        self.rotary = position

    @staticmethod
    def _split(t: Tensor) -> Tensor:
        b, h, n, width = t.shape
        return t.view(b, h, n, 2, width // 2).transpose(2, 3).reshape(b, 2 * h, n, width // 2)

    @staticmethod
    def _merge(t: Tensor) -> Tensor:
        b, h2, n, d = t.shape
        return t.view(b, h2 // 2, 2, n, d).transpose(2, 3).reshape(b, h2 // 2, n, 2 * d)

    def forward(self, q: Tensor, k: Tensor, positions: Any) -> tuple[Tensor, Tensor]:
        q, k = self.rotary(self._split(q), self._split(k), positions)
        return self._merge(q), self._merge(k)
