"""QK-norm (cosine-similarity attention): queries and keys are l2-normalised (per group of
features), optionally times learned per-feature scales, and the logits get a fixed scale.

Henry et al. 2020, https://arxiv.org/abs/2010.04245; learned scales as in ViT-22B,
https://arxiv.org/abs/2302.05442. ``QKRMSNorm``: per-head RMSNorm of queries and keys with
learned gains (x-transformers 2.x ``qk_rmsnorm``; Qwen3's q_norm / k_norm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["QKNorm", "QKRMSNorm", "l2norm"]


def l2norm(t: Tensor, groups: int = 1) -> Tensor:
    """Normalise each of `groups` equal slices of the last dimension to unit l2 norm."""
    if groups == 1:
        return F.normalize(t, dim=-1)
    shape = t.shape
    return F.normalize(t.reshape(*shape[:-1], groups, -1), dim=-1).reshape(shape)


class QKNorm(nn.Module):
    """(q, k) -> (normalised q * q scale, normalised k * k scale).

    The learned scales have one row per query head (``qk_norm_q_scale``, ``qk_norm_k_scale``,
    shape (heads, 1, dim_head)). With fewer key/value heads than query heads the key scale is
    folded into the queries instead (q . (s * k) == (s * q) . k), so keys and the KV cache keep
    their kv_heads heads.
    """

    def __init__(
        self, heads: int, kv_heads: int, dim_head: int, groups: int = 1, dim_scale: bool = False
    ) -> None:
        super().__init__()
        self.groups = groups
        self.fold_key_scale = kv_heads != heads
        self.qk_norm_q_scale = nn.Parameter(torch.ones(heads, 1, dim_head)) if dim_scale else None
        self.qk_norm_k_scale = nn.Parameter(torch.ones(heads, 1, dim_head)) if dim_scale else None

    def reset_parameters(self) -> None:
        if self.qk_norm_q_scale is not None and self.qk_norm_k_scale is not None:
            nn.init.ones_(self.qk_norm_q_scale)
            nn.init.ones_(self.qk_norm_k_scale)

    def queries(self, q: Tensor) -> Tensor:
        """q (b, h, i, d) normalised and scaled (with the folded key scale, if folded)."""
        q = l2norm(q, self.groups)
        q_scale, k_scale = self.qk_norm_q_scale, self.qk_norm_k_scale
        if q_scale is None or k_scale is None:  # both or neither (dim_scale)
            return q
        if self.fold_key_scale:
            return q * (q_scale * k_scale)
        return q * q_scale

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q (b, h, i, d), k (b, kvh, j, d)."""
        k = l2norm(k, self.groups)
        if self.qk_norm_k_scale is not None and not self.fold_key_scale:
            k = k * self.qk_norm_k_scale
        return self.queries(q), k

    def memory_keys(self, mem_k: Tensor) -> Tensor:
        """Learned memory keys (kvh, m, d): normalised as whole vectors (as x-transformers 1.28.2
        does, whatever the groups), then the key scale unless it is folded into the queries."""
        mem_k = F.normalize(mem_k, dim=-1)
        if self.qk_norm_k_scale is None or self.fold_key_scale:
            return mem_k
        return mem_k * self.qk_norm_k_scale


class QKRMSNorm(nn.Module):
    """(q, k) -> (RMSNorm(q) * q gain, RMSNorm(k) * k gain), per head, before rotary.

    Each head's vector is divided by its root mean square, ``rsqrt(mean(x ** 2) + eps)``
    (computed in float32 at least, as Hugging Face's RMSNorm), then multiplied by a learned gain
    of shape (heads, 1, dim_head) for queries and (kv_heads, 1, dim_head) for keys. With
    ``eps = 0`` this is x-transformers 2.x's ``qk_rmsnorm`` (l2-normalise, times sqrt(dim_head),
    times the gain); Qwen3 / OLMo 2 use their ``rms_norm_eps`` and one gain shared by the heads
    (copied into each head's row). The attention logits keep the usual dim_head ** -0.5 scale.
    """

    def __init__(self, heads: int, kv_heads: int, dim_head: int, eps: float = 0.0) -> None:
        super().__init__()
        self.eps = eps
        # x-transformers 2.x divides by max(||x||, 1e-12): the same floor on the root mean square
        self.floor = 1e-24 / dim_head
        self.q_weight = nn.Parameter(torch.ones(heads, 1, dim_head))
        self.k_weight = nn.Parameter(torch.ones(kv_heads, 1, dim_head))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.q_weight)
        nn.init.ones_(self.k_weight)

    def _norm(self, t: Tensor, weight: Tensor) -> Tensor:
        x = t.to(torch.promote_types(t.dtype, torch.float32))
        mean_square = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt((mean_square + self.eps).clamp_min(self.floor))
        return weight * x.to(t.dtype)

    def queries(self, q: Tensor) -> Tensor:
        """q (b, h, i, d) normalised and scaled."""
        return self._norm(q, self.q_weight)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q (b, h, i, d), k (b, kvh, j, d)."""
        return self.queries(q), self._norm(k, self.k_weight)

    def extra_repr(self) -> str:
        return f"heads={self.q_weight.shape[0]}, kv_heads={self.k_weight.shape[0]}, eps={self.eps}"
