"""Talking heads: a learned heads x heads mix of the attention logits (before the softmax) or of
the attention weights (after it). Shazeer et al. 2020, https://arxiv.org/abs/2003.02436."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["TalkingHeads"]


class TalkingHeads(nn.Module):
    """(b, h, i, j) -> (b, h, i, j): out[:, g] = sum_h weight[g, h] * t[:, h]."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the init of a 1x1 convolution over heads (what x-transformers uses)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, t: Tensor) -> Tensor:
        b, h, i, j = t.shape
        return (self.weight.to(t.dtype) @ t.reshape(b, h, i * j)).view(b, h, i, j)
