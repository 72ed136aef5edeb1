"""Absolute positional embeddings: learned (x-transformers' default) and scaled sinusoidal."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tables import PositionTables, tables_mode

__all__ = ["AbsolutePositionalEmbedding", "ScaledSinusoidalEmbedding"]


class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute positions, scaled by dim**-0.5 (or l2-normalised)."""

    def __init__(self, dim: int, max_seq_len: int, l2norm_embed: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        self.max_seq_len = max_seq_len
        self.l2norm_embed = l2norm_embed
        self.scale = 1.0 if l2norm_embed else dim**-0.5
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.emb.weight, std=1e-5 if self.l2norm_embed else 1.0)

    def forward(self, pos: Tensor) -> Tensor:
        emb = self.emb(pos) * self.scale
        return F.normalize(emb, dim=-1) if self.l2norm_embed else emb


class ScaledSinusoidalEmbedding(PositionTables):
    """Fixed sinusoids times one learned scale (FLASH, https://arxiv.org/abs/2202.10447). The
    frequencies and angles are float32 whatever the module dtype; the sinusoids are cast to the
    scale's dtype."""

    inv_freq: Tensor  # a computed buffer (not saved)

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"scaled_sinu_pos_emb needs an even embedding width, got {dim}")
        self.dim, self.theta = dim, theta
        self.scale = nn.Parameter(torch.empty(1))
        self.register_buffer("inv_freq", torch.empty(dim // 2), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The learned scale starts at dim**-0.5; the frequencies are recomputed (not saved)."""
        with torch.no_grad():
            self.scale.fill_(self.dim**-0.5)
        with tables_mode():
            self.reset_tables()

    def reset_tables(self) -> None:
        half = self.dim // 2
        exponent = torch.arange(half, device=self.inv_freq.device, dtype=self.tables_dtype) / half
        self.inv_freq = self.theta**-exponent

    def forward(self, pos: Tensor) -> Tensor:
        angles = pos.to(self.inv_freq.dtype).unsqueeze(-1) * self.inv_freq
        sinusoids = torch.cat((angles.sin(), angles.cos()), dim=-1)
        return sinusoids.to(self.scale.dtype) * self.scale
