"""Multi-head latent attention (DeepSeek-V2, https://arxiv.org/abs/2405.04434), with
x-transformers 2.x's keywords and layout.

- ``use_latent_q``: queries from a low-rank latent, q = W_q (W_dq x) (``to_latent_q``, ``to_q``).
- ``use_latent_kv``: keys and values from one shared latent c = W_dkv x of width
  ``dim_latent_kv`` (``to_latent_kv``); k = W_uk c, v = W_uv c (``to_k``, ``to_v``).
- ``latent_rope_subheads`` = s (decoupled rotary): the last s key heads come straight from x
  (``to_rotateable_k``), not through the latent, and only they (and the last s query heads) are
  rotated; the other heads carry no position.

In self-attention the KV cache holds only the latent c (b, 1, n, dim_latent_kv) and the s rotated
key heads (b, s, n, dim_head): keys and values are re-projected from the cached latents at every
step (no weight absorption). Cross-attention computes and caches its keys and values as usual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LatentQKV"]


class LatentQKV(nn.Module):
    """Projections of multi-head latent attention: (x, context) -> q, k, v (b, n, features),
    keys as [the latent's (kv_heads - s) heads, the s decoupled rotary heads]."""

    def __init__(
        self,
        dim: int,
        heads: int,
        kv_heads: int,
        dim_head: int,
        value_dim: int,
        *,
        dim_latent_q: int | None = None,
        dim_latent_kv: int | None = None,
        rope_subheads: int = 0,
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.dim_head = heads, kv_heads, dim_head
        self.rope_subheads = rope_subheads
        self.to_latent_q = nn.Linear(dim, dim_latent_q, bias=False) if dim_latent_q else None
        self.to_latent_kv = nn.Linear(dim, dim_latent_kv, bias=False) if dim_latent_kv else None
        dim_kv_input = dim_latent_kv or dim
        self.to_q = nn.Linear(dim_latent_q or dim, heads * dim_head, bias=False)
        self.to_k = nn.Linear(dim_kv_input, (kv_heads - rope_subheads) * dim_head, bias=False)
        self.to_v = nn.Linear(dim_kv_input, kv_heads * value_dim, bias=False)
        self.to_rotateable_k = (
            nn.Linear(dim, rope_subheads * dim_head, bias=False) if rope_subheads else None
        )

    @property
    def caches_latent(self) -> bool:
        """Whether self-attention caches the latent (use_latent_kv) instead of keys/values."""
        return self.to_latent_kv is not None

    def queries(self, x: Tensor) -> Tensor:
        return self.to_q(x if self.to_latent_q is None else self.to_latent_q(x))

    def latents(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """(b, n, dim) -> the latent (b, 1, n, dim_latent_kv), the decoupled key heads
        (b, s, n, dim_head) (s may be 0)."""
        b, n, _ = src.shape
        latent = src if self.to_latent_kv is None else self.to_latent_kv(src)
        if self.to_rotateable_k is None:
            rope = src.new_zeros(b, 0, n, self.dim_head)
        else:
            rope = self.to_rotateable_k(src).view(b, n, self.rope_subheads, -1).transpose(1, 2)
        return latent.unsqueeze(1), rope

    def keys_values(self, latent: Tensor, rope: Tensor) -> tuple[Tensor, Tensor]:
        """Cached latents -> k (b, kv_heads, j, d), v (b, kv_heads, j, d_v)."""
        c = latent.squeeze(1)
        b, j, _ = c.shape
        k = self.to_k(c).view(b, j, -1, self.dim_head).transpose(1, 2)
        v = self.to_v(c).view(b, j, self.kv_heads, -1).transpose(1, 2)
        return torch.cat((k, rope), dim=1), v

    def forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Flat q (b, n, h d), k (b, m, kvh d), v (b, m, kvh d_v) (no rotary: cross-attention)."""
        latent, rope = self.latents(x if context is None else context)
        k, v = self.keys_values(latent, rope)
        flat = [t.transpose(1, 2).flatten(2) for t in (k, v)]
        return self.queries(x), flat[0], flat[1]

    def project(
        self, attn: Any, x: Tensor, positions: Any, cache: Any
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention: heads, the rotary of the last s query/key heads, the latents cached
        (``attn``: the owning Attention, for its position module and cache update)."""
        b, n, _ = x.shape
        q = self.queries(x).view(b, n, self.heads, -1).transpose(1, 2)
        latent, rope = self.latents(x)
        s = self.rope_subheads
        if attn.position is not None:
            if positions is None:
                raise ValueError(
                    "Attention: positions are required (b|1, n): this layer rotates its queries "
                    "and keys (it has a rotary position module)"
                )
            q_rot, rope = attn.position(q[:, self.heads - s :], rope, positions)
            q = torch.cat((q[:, : self.heads - s], q_rot), dim=1)
        if cache is not None:
            latent, rope = attn.cache_update(cache, latent, rope)
        k, v = self.keys_values(latent, rope)
        return q, k, v
