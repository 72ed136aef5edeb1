"""The attention z-loss: a penalty on the log-partition of the attention logits, which keeps
them from drifting large (ST-MoE, https://arxiv.org/abs/2202.08906, appendix; PaLM).

As x-transformers computes it: the logsumexp over keys of each layer's pre-softmax logits, summed
over the layers, squared, summed over heads and averaged over batch and positions, times weight.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["attention_z_loss"]


def attention_z_loss(
    pre_softmax_attns: Sequence[Tensor], weight: float = 1e-4, mask: Tensor | None = None
) -> Tensor:
    """pre_softmax_attns: per layer (b, h, n, j) -> scalar. ``mask`` (b, n): positions to average
    over (default: all)."""
    if not pre_softmax_attns:
        raise ValueError("attention_z_loss: no attention logits given (a stack without attention?)")
    lse = functools.reduce(
        operator.add,
        (
            attn.to(torch.promote_types(attn.dtype, torch.float32)).logsumexp(dim=-1)
            for attn in pre_softmax_attns
        ),
    )
    loss = lse.square().sum(dim=1)  # (b, n)
    if mask is None:
        return loss.mean() * weight
    return loss[mask].sum() / mask.sum().clamp(min=1e-5) * weight
