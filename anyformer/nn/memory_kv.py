"""Keys every query may attend to besides the sequence's own: learned memory key/values
(Sukhbaatar et al. 2019, https://arxiv.org/abs/1907.01470) and the all-zero key/value that lets a
query attend to nothing (Miller 2023, https://www.evanmiller.org/attention-is-off-by-one.html).

They are prepended at attention time, never written to the KV cache: the cache holds the
sequence's keys only. Order, as in x-transformers: [zero key, memory keys..., sequence keys...].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import AttentionMask

__all__ = ["PrependedKV", "prepend_keys"]


def prepend_keys(
    mask: AttentionMask, count: int, q_len: int, k_len: int, device: torch.device
) -> AttentionMask:
    """The mask over `count` always-visible keys followed by the `k_len` keys `mask` covers.

    Every query sees the prepended keys, so no row is empty any more (rows that had no key now
    attend to the prepended ones only); an additive bias is 0 on them.
    """
    bias = None if mask.bias is None else F.pad(mask.bias, (count, 0))
    keep = mask.keep(q_len, k_len, device)
    if keep is None:
        return AttentionMask(bias=bias)
    if mask.row_valid is not None:
        keep = keep & mask.row_valid  # close the rows that were opened only to avoid NaN
    keep = F.pad(keep, (count, 0), value=True)
    return AttentionMask(mask=keep, bias=bias)


class PrependedKV(nn.Module):
    """(k, v, mask) -> ([zero,] memory keys, k), (.., v), the mask over all of them.

    ``mem_k`` (kv_heads, num_mem_kv, dim_head), ``mem_v`` (kv_heads, num_mem_kv, value_dim):
    learned, N(0, 1) at init.
    """

    def __init__(
        self, num_mem_kv: int, add_zero_kv: bool, kv_heads: int, dim_head: int, value_dim: int
    ) -> None:
        super().__init__()
        self.num_mem_kv = num_mem_kv
        self.add_zero_kv = add_zero_kv
        self.count = num_mem_kv + int(add_zero_kv)
        self.mem_k = self.mem_v = None
        if num_mem_kv:
            self.mem_k = nn.Parameter(torch.empty(kv_heads, num_mem_kv, dim_head))
            self.mem_v = nn.Parameter(torch.empty(kv_heads, num_mem_kv, value_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.mem_k is not None and self.mem_v is not None:
            nn.init.normal_(self.mem_k)
            nn.init.normal_(self.mem_v)

    def forward(
        self,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask,
        q_len: int,
        memory_keys: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, AttentionMask]:
        """k (b, kvh, j, d), v (b, kvh, j, d_v); ``memory_keys`` maps the memory keys as the
        sequence's keys were mapped (qk-norm)."""
        b, kv_heads = k.shape[:2]
        keys, values = [], []
        if self.add_zero_kv:
            keys.append(k.new_zeros(b, kv_heads, 1, k.shape[-1]))
            values.append(v.new_zeros(b, kv_heads, 1, v.shape[-1]))
        if self.mem_k is not None and self.mem_v is not None:
            mem_k = self.mem_k if memory_keys is None else memory_keys(self.mem_k)
            keys.append(mem_k.to(k.dtype).expand(b, *mem_k.shape[-3:]))
            values.append(self.mem_v.to(v.dtype).expand(b, *self.mem_v.shape))
        mask = prepend_keys(mask, self.count, q_len, k.shape[-2], k.device)
        return torch.cat((*keys, k), dim=-2), torch.cat((*values, v), dim=-2), mask

    def extra_repr(self) -> str:
        return f"num_mem_kv={self.num_mem_kv}, add_zero_kv={self.add_zero_kv}"
