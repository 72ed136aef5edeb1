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
        # narrow + copy_: the plain-tensor calls (tuple indexing costs more per decode step)
        self.k.narrow(2, start, n).copy_(k)
        self.v.narrow(2, start, n).copy_(v)
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)

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
        # positions (set by the stack when its scheme needs them)
        self.key_positions: Tensor | None = None  # (b|1, capacity) position of every cached key
        self.xpos_center: Tensor | int | None = None  # xPos centre, fixed at the first call
        self.seq_start_pos: Tensor | None = None  # (b,) left padding, given on the first call

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

    def extend_positions(self, positions: Tensor, n: int) -> Tensor:
        """Record the new rows' positions (b|1, n); return the positions of all keys (b|1, k).

        Columns cached before the first call that recorded positions held the default ones
        (their column index)."""
        end = self.length + n
        stored = self.key_positions
        batch = max(positions.shape[0], 1 if stored is None else stored.shape[0])
        if stored is None or stored.shape[-1] < end or stored.shape[0] < batch:
            capacity = max(end, self.capacity or 0, 0 if stored is None else stored.shape[-1])
            grown = torch.arange(capacity, device=positions.device).expand(batch, -1).clone()
            if stored is not None:
                grown[:, : stored.shape[-1]] = stored
            self.key_positions = stored = grown
        stored[:, self.length : end] = positions
        return stored[:, :end]

    def advance(self, n: int) -> None:
        self.length += n

    # ------------------------------------------------------------------ generation helpers

    def reorder(self, batch_indices: Tensor) -> None:
        """Beam search: row ``i`` of every buffer becomes old row ``batch_indices[i]``.

        With as many indices as rows, rows move inside the existing buffers: only the filled
        positions are copied, one layer at a time, and no buffer is reallocated. Another number of
        indices (expanding each prompt to its beams once) allocates new buffers of that batch size.
        """
        if (
            not isinstance(batch_indices, Tensor)
            or batch_indices.ndim != 1
            or batch_indices.dtype not in (torch.long, torch.int32)
        ):
            got = (
                f"{batch_indices.dtype} tensor of shape {tuple(batch_indices.shape)}"
                if isinstance(batch_indices, Tensor)
                else type(batch_indices).__name__
            )
            raise TypeError(
                f"KVCache.reorder: batch_indices must be a 1-D integer tensor, got {got}"
            )
        for layer in self.layers:
            if layer.k is None:
                continue
            if layer.is_cross or layer.k.shape[0] != batch_indices.shape[0]:
                layer.k, layer.v = layer.k[batch_indices], layer.v[batch_indices]
            else:
                filled = self.length
                layer.k[:, :, :filled] = layer.k[batch_indices, :, :filled]
                layer.v[:, :, :filled] = layer.v[batch_indices, :, :filled]
        if self.key_mask is not None:
            self.key_mask = self.key_mask[batch_indices]
        if self.key_positions is not None and self.key_positions.shape[0] > 1:
            self.key_positions = self.key_positions[batch_indices]
        if self.seq_start_pos is not None:
            self.seq_start_pos = self.seq_start_pos[batch_indices]
        if self.context_mask is not None:
            self.context_mask = self.context_mask[batch_indices]

    def truncate(self, length: int) -> None:
        """Roll back to the first ``length`` cached positions (speculative decoding's rejections).

        The positions after ``length`` are forgotten: the next write goes to ``length``, and their
        key-mask entries are reset, so the cache equals a fresh prefill of its first ``length``
        positions. Cross-attention keys (the context) are kept.
        """
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"KVCache.truncate: length must be an int, got {type(length).__name__}")
        if not 0 <= length <= self.length:
            raise ValueError(
                f"KVCache.truncate: length must be in [0, {self.length}] (the cached positions), "
                f"got {length}"
            )
        if self.key_mask is not None:
            self.key_mask[:, length : self.length] = True
        self.length = length
