"""InputProjection: the weight (and bias) of a linear map that a head-output module applies to
the layer input, initialised as ``nn.Linear``; its call takes two inputs (the heads' outputs
and the layer input), so it is not a drop-in ``nn.Linear``."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["InputProjection"]


class InputProjection(nn.Module):
    """``weight`` (out_features, in_features) and optional ``bias`` (out_features): the same
    parameters, names and initialisation as ``nn.Linear(in_features, out_features, bias)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation: Kaiming-uniform weight, bias uniform in +-1/sqrt(fan_in)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )
