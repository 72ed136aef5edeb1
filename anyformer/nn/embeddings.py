"""Token embeddings (the absolute positional embeddings live in ``nn/positions/absolute.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .positions.absolute import AbsolutePositionalEmbedding, ScaledSinusoidalEmbedding

__all__ = ["AbsolutePositionalEmbedding", "ScaledSinusoidalEmbedding", "TokenEmbedding"]


class TokenEmbedding(nn.Module):
    """Token ids -> vectors; optionally l2-normalised (fixnorm)."""

    def __init__(
        self, dim: int, num_tokens: int, l2norm_embed: bool = False, scale: float | None = None
    ) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_tokens, dim)
        self.l2norm_embed = l2norm_embed
        self.scale = scale  # token_emb_scale: a factor rounded to the embeddings' dtype first
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.emb.weight, std=1e-5 if self.l2norm_embed else 0.02)

    def forward(self, x: Tensor) -> Tensor:
        emb = self.emb(x)
        if self.scale is not None:  # as Gemma: the factor in the embeddings' dtype
            emb = emb * torch.tensor(self.scale, dtype=emb.dtype, device=emb.device)
        return F.normalize(emb, dim=-1) if self.l2norm_embed else emb
