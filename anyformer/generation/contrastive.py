"""Contrastive decoding: an expert's scores, corrected by what an amateur model would say.

Li et al. 2022 (https://arxiv.org/abs/2210.15097) score the tokens an expert finds plausible by
how much more the expert likes them than an amateur does. O'Brien & Lewis 2023
(https://arxiv.org/abs/2309.09117, Appendix A, Algorithm 2) write it on logits, as x-transformers
does::

    score = (1 + beta) * expert_logits - beta * amateur_logits
    score = -inf  where  expert_logits < log(alpha) + max(expert_logits)

The cut-off keeps exactly the tokens with ``p_expert >= alpha * max p_expert`` (a softmax only
shifts logits by a constant). With several amateurs the correction is applied once per amateur,
in order, each step's result being the next step's expert scores (as x-transformers does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor

from .options import ContrastiveConfig

__all__ = ["ContrastiveScorer", "contrastive_logits"]


def contrastive_logits(
    expert_logits: Tensor, amateur_logits: Tensor, alpha: float = 0.1, beta: float = 0.5
) -> Tensor:
    """(1 + beta) * expert - beta * amateur on the plausible tokens, -inf elsewhere."""
    if expert_logits.shape != amateur_logits.shape:
        raise ValueError(
            "contrastive decoding: the expert's and the amateur's logits must have the same shape "
            f"(the same vocabulary), got {tuple(expert_logits.shape)} and "
            f"{tuple(amateur_logits.shape)}"
        )
    cutoff = math.log(alpha) + expert_logits.amax(dim=-1, keepdim=True)
    scores = (1 + beta) * expert_logits - beta * amateur_logits.to(expert_logits.dtype)
    return scores.masked_fill(expert_logits < cutoff, float("-inf"))


class ContrastiveScorer:
    """Combines an expert stepper with amateur steppers, each with its own cache."""

    def __init__(
        self,
        expert_start: Callable[[], Tensor],
        expert_step: Callable[[Tensor], Tensor],
        amateurs: Sequence[tuple[Callable[[], Tensor], Callable[[Tensor], Tensor]]],
        configs: Sequence[ContrastiveConfig],
    ) -> None:
        self.expert = (expert_start, expert_step)
        self.amateurs = list(amateurs)
        self.configs = list(configs)

    def _combine(self, expert: Tensor, amateurs: list[Tensor]) -> Tensor:
        for logits, config in zip(amateurs, self.configs):
            expert = contrastive_logits(expert, logits, config.alpha, config.beta)
        return expert

    def start(self) -> Tensor:
        return self._combine(self.expert[0](), [start() for start, _ in self.amateurs])

    def step(self, token: Tensor) -> Tensor:
        return self._combine(self.expert[1](token), [step(token) for _, step in self.amateurs])
