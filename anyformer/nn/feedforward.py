"""FeedForward: linear -> activation (optionally gated) -> [norm] -> dropout -> linear."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config.feedforward import FeedForwardConfig
from ..config.options import build_options
from .norms import LayerNorm

__all__ = ["GLU", "FeedForward", "ReluSquared"]


class ReluSquared(nn.Module):
    """relu(x) ** 2 (Primer, https://arxiv.org/abs/2109.08668)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x).square()


class GLU(nn.Module):
    """Split the projection into (value, gate): value * act(gate) [* learned multiplier]."""

    def __init__(self, activation: nn.Module, dim: int, mult_bias: bool) -> None:
        super().__init__()
        self.act = activation
        self.mult_bias = nn.Parameter(torch.ones(dim)) if mult_bias else None

    def reset_parameters(self) -> None:
        if self.mult_bias is not None:
            nn.init.ones_(self.mult_bias)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = x.chunk(2, dim=-1)
        out = value * self.act(gate)
        return out * self.mult_bias if self.mult_bias is not None else out


def _activation(config: FeedForwardConfig) -> nn.Module:
    if config.relu_squared:
        return ReluSquared()
    if config.relu:
        return nn.ReLU()
    if config.swish:
        return nn.SiLU()
    return nn.GELU(approximate="tanh" if config.gelu_tanh else "none")


class FeedForward(nn.Module):
    """Position-wise feedforward; options as in FeedForwardConfig (``ff_*`` on a stack)."""

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        config: FeedForwardConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if config is None:
            valid = [*FeedForwardConfig.__dataclass_fields__, "dim", "dim_out"]
            config = build_options(FeedForwardConfig, "FeedForward", kwargs, valid=valid)
        elif kwargs:
            raise TypeError("FeedForward: pass either config= or keyword options, not both")
        if config.num_experts > 1:
            raise ValueError(
                f"FeedForward: num_experts={config.num_experts} asks for a mixture of experts, "
                "which anyformer.nn.moe.MixtureOfExperts(dim, config) builds (a stack builds it "
                "from ff_num_experts)"
            )
        self.config = config
        dim_out = dim if dim_out is None else dim_out
        inner = config.inner_dim or int(dim * config.mult)
        bias = not config.no_bias

        # no_bias drops the GLU projection bias too (x-transformers 1.28.2 kept it: a defect).
        self.proj_in = nn.Linear(dim, inner * 2 if config.glu else inner, bias=bias)
        activation = _activation(config)
        self.act = GLU(activation, inner, config.glu_mult_bias) if config.glu else activation
        self.post_act_norm = LayerNorm(inner) if config.post_act_ln else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.proj_out = nn.Linear(inner, dim_out, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise what this module owns beyond its children's defaults."""
        if self.config.zero_init_output:
            nn.init.zeros_(self.proj_out.weight)
            if self.proj_out.bias is not None:
                nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.proj_in(x))
        return self.proj_out(self.dropout(self.post_act_norm(h)))
