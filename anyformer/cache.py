"""The KV cache: preallocated per-layer key/value buffers written in place.

``generate`` creates a ``KVCache`` sized for prompt + new tokens and passes it through
``forward(cache=...)``. Self-attention layers write their new keys/values at the cache's current
length and read the prefix back as a view (no concatenation per step); cross-attention layers
compute the context's keys/values once and reuse them. The cache also keeps the key-padding mask
of everything it holds, so a step passes only the new tokens' mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache", "LayerKVCache"]


class LayerKVCache:
    """Keys and values of one attention layer, (b, h, capacity, d) buffers."""

    def __init__(self, parent: KVCache, is_cross: bool) -> None:
        self.parent = parent
        self.is_cross = is_cross
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def filled(self) -> bool:
        return self.k is not None

    def set_context(self, k: Tensor, v: Tensor) -> None:
        """Cross-attention: store the context's keys/values once."""
        self.k, self.v = k, v

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Self-attention: write new k/v at the parent's length; return all keys/values so far."""
        start, n = self.parent.length, k.shape[-2]
        end = start + n
        if self.k is None or end > self.k.shape[-2]:
            self._grow(k, v, end)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def _grow(self, k: Tensor, v: Tensor, needed: int) -> None:
        old = 0 if self.k is None else self.k.shape[-2]
        capacity = max(needed, self.parent.capacity or 0, 2 * old)
        new_k = k.new_zeros(*k.shape[:2], capacity, k.shape[-1])
        new_v = v.new_zeros(*v.shape[:2], capacity, v.shape[-1])
        if self.k is not None:
            new_k[:, :, :old] = self.k
            new_v[:, :, :old] = self.v
        self.k, self.v = new_k, new_v


class KVCache:
    """All layers' caches, the number of cached positions and their key-padding mask."""

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"KVCache: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.length = 0
        self.num_prepended = 0
        self.key_mask: Tensor | None = None
        self.context_mask: Tensor | None = None  # cross-attention: the context's mask
        self.context_len = 0
        self.layers: list[LayerKVCache] = []

    def layer(self, index: int, is_cross: bool) -> LayerKVCache:
        """The cache of attention layer `index` (created on first use)."""
        while len(self.layers) <= index:
            self.layers.append(LayerKVCache(self, is_cross))
        return self.layers[index]

    def extend_mask(
        self, new_mask: Tensor | None, batch: int, n: int, device: torch.device
    ) -> Tensor | None:
        """Record the new tokens' key mask; return the mask over all keys, or None if all kept."""
        if new_mask is None and self.key_mask is None:
            return None
        end = self.length + n
        if self.key_mask is None or self.key_mask.shape[-1] < end:
            capacity = max(end, self.capacity or 0)
            grown = torch.ones(batch, capacity, dtype=torch.bool, device=device)
            if self.key_mask is not None:
                grown[:, : self.key_mask.shape[-1]] = self.key_mask
            self.key_mask = grown
        if new_mask is not None:
            self.key_mask[:, self.length : end] = new_mask
        return self.key_mask[:, :end]

    def restrict_keys(self, start: int, keep: Tensor) -> None:
        """AND `keep` (b, k) into the key mask of cached columns [start, start + k) (a window)."""
        batch, k = keep.shape
        if self.key_mask is None:
            capacity = max(self.length, self.capacity or 0)
            self.key_mask = torch.ones(batch, capacity, dtype=torch.bool, device=keep.device)
        self.key_mask[:, start : start + k] &= keep

    def advance(self, n: int) -> None:
        self.length += n
