"""External keys/values that a self-attention layer also attends to (x-transformers 2.x
``self_attn_additional_kv``: say the cached keys/values of another model, a VLM's, per layer).

They are prepended at attention time as given (no projection, no rotation, never cached), with
an optional (b, m) key mask ``additional_kv_mask``; every query may see them (also causally).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .masks import AttentionMask
from .memory_kv import prepend_keys

__all__ = ["prepend_additional_kv"]


def prepend_additional_kv(
    k: Tensor,
    v: Tensor,
    plan: AttentionMask,
    q_len: int,
    added: tuple[Tensor, Tensor],
    added_mask: Tensor | None,
) -> tuple[Tensor, Tensor, AttentionMask]:
    """k (b, kvh, j, d), v (b, kvh, j, d_v), ``added`` = (k', v') of shapes (b, kvh, m, d) and
    (b, kvh, m, d_v), ``added_mask`` (b, m) bool or None -> (k' ++ k, v' ++ v, the mask)."""
    added_k, added_v = added
    if not (isinstance(added_k, Tensor) and isinstance(added_v, Tensor)):
        raise TypeError(
            "self_attn_additional_kv: each entry must be a (keys, values) pair of tensors, got "
            f"{type(added_k).__name__} and {type(added_v).__name__}"
        )
    b, kv_heads, _, d = k.shape
    m = added_k.shape[-2]
    want_k, want_v = (b, kv_heads, m, d), (b, kv_heads, m, v.shape[-1])
    if tuple(added_k.shape) != want_k or tuple(added_v.shape) != want_v:
        raise ValueError(
            "self_attn_additional_kv: keys/values must be (batch, kv_heads, m, dim_head) = "
            f"{want_k} / {want_v} for this layer, got {tuple(added_k.shape)} / "
            f"{tuple(added_v.shape)}"
        )
    mask = prepend_keys(plan, m, q_len, k.shape[-2], k.device)
    if added_mask is not None:
        if added_mask.dtype != torch.bool or tuple(added_mask.shape) != (b, m):
            raise ValueError(
                f"additional_kv_mask must be a bool tensor of shape (batch, m) = {(b, m)}, got "
                f"{added_mask.dtype} {tuple(added_mask.shape)}"
            )
        keep = mask.keep(q_len, m + k.shape[-2], k.device)
        rest = torch.ones(b, 1, 1, k.shape[-2], dtype=torch.bool, device=k.device)
        column = torch.cat((added_mask[:, None, None, :], rest), dim=-1)
        keep = column if keep is None else keep & column
        mask = AttentionMask(mask=keep, bias=mask.bias)
    k = torch.cat((added_k.to(k.dtype), k), dim=-2)
    v = torch.cat((added_v.to(v.dtype), v), dim=-2)
    return k, v, mask
