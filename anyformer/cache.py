"""The KV cache: preallocated per-layer key/value buffers written in place.

``generate`` creates a ``KVCache`` sized for prompt + new tokens and passes it through
``forward(cache=...)``. Self-attention layers write their new keys/values at the cache's current
length and read the prefix back as a view (no concatenation per step); cross-attention layers
compute the context's keys/values once and reuse them. A sliding-window layer (W keys) keeps only
its last W keys/values, in a ring buffer (``update_window``). The cache also keeps the key-padding mask
of everything it holds, so a step passes only the new tokens' mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache", "LayerKVCache", "StaticCache", "StaticLayerCache"]


class LayerKVCache:
    """Keys and values of one attention layer, (b, h, capacity, d) buffers."""

    def __init__(self, parent: KVCache, is_cross: bool) -> None:
        self.parent = parent
        self.is_cross = is_cross
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.window: int | None = None  # sliding window: a ring buffer (update_window)
        self.span = 0  # the ring's columns a query reads
        # per-key state of a layer's own modules, (b, h, capacity) by column (data-dependent ALiBi)
        self.extras: dict[str, Tensor] = {}

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
        buf_k, buf_v = self.k, self.v
        if buf_k is None or buf_v is None or end > buf_k.shape[-2]:
            buf_k, buf_v = self._grow(k, v, end)
        # narrow + copy_: the plain-tensor calls (tuple indexing costs more per decode step)
        buf_k.narrow(2, start, n).copy_(k)
        buf_v.narrow(2, start, n).copy_(v)
        return buf_k.narrow(2, 0, end), buf_v.narrow(2, 0, end)

    def update_window(self, k: Tensor, v: Tensor, window: int) -> tuple[Tensor, Tensor]:
        """Self-attention over a sliding window of `window` keys: ring buffers (b, h, size, d),
        column c in slot c % size. The queries read the last ``span`` columns: `window` plus
        the most padding columns of a row when the cache starts (padding holds no key a query
        counts); ``size`` adds the parent's ``window_slack`` (room to roll back). Returns the up
        to span - 1 columns before the new ones, in order, then the new ones."""
        start, n = self.parent.length, k.shape[-2]
        if self.k is None or self.v is None:
            self.window, self.span = window, window + self._holes(0, start + n)
            size = self.span + self.parent.window_slack
            self.k = k.new_zeros(*k.shape[:2], size, k.shape[-1])
            self.v = v.new_zeros(*v.shape[:2], size, v.shape[-1])
        elif self._holes(start, start + n):
            raise ValueError(
                "KVCache: a sliding-window layer takes masked (padding) tokens only in the "
                "cache's first call (its ring is sized then)"
            )
        past = min(start, self.span - 1)
        if past:
            k = torch.cat((*self._ring_read(self.k, start - past, past), k), dim=2)
            v = torch.cat((*self._ring_read(self.v, start - past, past), v), dim=2)
        kept = min(n, self.k.shape[2])  # the new columns later queries may still read
        self._ring_write(self.k, start + n - kept, k[:, :, -kept:])
        self._ring_write(self.v, start + n - kept, v[:, :, -kept:])
        return k, v

    def can_roll_back(self, old: int, new: int) -> bool:
        """Whether the ring still holds the columns a query at column `new` reads, after
        columns up to `old` were written (always, for a layer without a ring)."""
        if self.window is None or self.k is None:
            return True
        return max(0, new - self.span + 1) >= max(0, old - self.k.shape[2])

    def _holes(self, start: int, end: int) -> int:
        """The most masked key columns in [start, end) of any row."""
        mask = self.parent.key_mask
        if mask is None:
            return 0
        return int((~mask[:, start:end]).sum(-1).max())

    @staticmethod
    def _ring_pieces(size: int, column: int, count: int) -> list[tuple[int, int]]:
        """(slot, length) pieces of `count` columns from `column` in a ring of `size` slots."""
        slot = column % size
        first = min(count, size - slot)
        return [(slot, first)] + ([(0, count - first)] if count > first else [])

    def _ring_read(self, buf: Tensor, column: int, count: int) -> list[Tensor]:
        return [buf.narrow(2, s, c) for s, c in self._ring_pieces(buf.shape[2], column, count)]

    def _ring_write(self, buf: Tensor, column: int, new: Tensor) -> None:
        done = 0
        for s, c in self._ring_pieces(buf.shape[2], column, new.shape[2]):
            buf.narrow(2, s, c).copy_(new.narrow(2, done, c))
            done += c

    def _grow(self, k: Tensor, v: Tensor, needed: int) -> tuple[Tensor, Tensor]:
        old = 0 if self.k is None else self.k.shape[-2]
        capacity = max(needed, self.parent.capacity or 0, 2 * old)
        new_k = k.new_zeros(*k.shape[:2], capacity, k.shape[-1])
        new_v = v.new_zeros(*v.shape[:2], capacity, v.shape[-1])
        if self.k is not None and self.v is not None:
            new_k[:, :, :old] = self.k
            new_v[:, :, :old] = self.v
        self.k, self.v = new_k, new_v
        return new_k, new_v


class KVCache:
    """All layers' caches, the number of cached positions and their key-padding mask."""

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"KVCache: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.length = 0
        self.num_prepended = 0
        # sliding-window layers: extra ring slots, so that truncate can roll back that many
        # more positions (speculative decoding's rejected drafts)
        self.window_slack = 0
        self.key_mask: Tensor | None = None
        self.context_mask: Tensor | None = None  # cross-attention: the context's mask
        self.context_len = 0
        self.context_rotated = False  # context_pos: the context's keys are rotated (first call)
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
            if layer.k is None or layer.v is None:
                continue
            if layer.is_cross or layer.k.shape[0] != batch_indices.shape[0]:
                layer.k, layer.v = layer.k[batch_indices], layer.v[batch_indices]
            else:
                filled = self.length
                layer.k[:, :, :filled] = layer.k[batch_indices, :, :filled]
                layer.v[:, :, :filled] = layer.v[batch_indices, :, :filled]
        for layer in self.layers:
            for name, extra in getattr(layer, "extras", {}).items():
                layer.extras[name] = extra[batch_indices]
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
        for layer in self.layers:
            if not layer.can_roll_back(self.length, length):
                size = 0 if layer.k is None else layer.k.shape[2]
                raise ValueError(
                    f"KVCache.truncate: a sliding-window layer keeps only its last {size} "
                    f"keys, so the cache cannot roll back from {self.length} to {length} "
                    "positions (KVCache.window_slack gives it room)"
                )
        if self.key_mask is not None:
            self.key_mask[:, length : self.length] = True
        self.length = length


class StaticLayerCache:
    """Keys and values of one self-attention layer in a :class:`StaticCache`: fixed
    (b, kv_heads, max_len, d) buffers, written in place, read back whole."""

    is_cross = False
    filled = True

    def __init__(self, parent: StaticCache, k: Tensor, v: Tensor) -> None:
        self.parent = parent
        self.k, self.v = k, v

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Prefill: write the n new columns at 0..n-1 and return them (causal attention over the
        prompt). Decode: write row r's one new column at ``parent.write_index[r]`` and return
        the whole buffers (the parent's key mask hides the columns not yet written)."""
        if self.parent.prefilling:
            n = k.shape[-2]
            self.k.narrow(2, 0, n).copy_(k)
            self.v.narrow(2, 0, n).copy_(v)
            return k, v
        index = self.parent.write_index.view(-1, 1, 1, 1)
        self.k.scatter_(2, index.expand_as(k), k)
        self.v.scatter_(2, index.expand_as(v), v)
        return self.k, self.v

    def update_window(self, k: Tensor, v: Tensor, window: int) -> tuple[Tensor, Tensor]:
        """Sliding windows read keys by count, which the static columns do not give."""
        raise ValueError(
            "StaticCache: a sliding-window layer (attn_sliding_window) decodes with a KVCache "
            "(generate(compile=False))"
        )


class StaticCache:
    """A KV cache whose shapes never change, for compiled decoding (``generate(compile=True)``).

    Every self-attention slot owns (batch, kv_heads, max_len, dim_head) key/value buffers
    allocated once. A prefill call (:meth:`begin_prefill`) writes the (right-padded) prompt at
    columns 0..n-1 and attends causally over those n columns. A decode call
    (:meth:`begin_decode` with each row's position, a (b,) tensor) writes the new token's
    keys/values at that column (``scatter_``) and attends over the whole buffer through a key
    mask of the columns <= that position; column c holds position c, so rotary and ALiBi
    positions come from position tensors and no shape depends on the step. Columns a
    right-padded row's prefill wrote past its prompt are overwritten by its own tokens before
    they become visible.

    The stack sees a cache of ``length`` 0 that never advances: every decode call must pass
    the rows' positions (``pos``), which is what :mod:`anyformer.generation.compiled` does.
    """

    length = 0
    num_prepended = 0
    seq_start_pos = None
    context_mask = None
    context_len = 0
    xpos_center = None

    def __init__(
        self,
        batch: int,
        max_len: int,
        shapes: list[tuple[int, int, int]],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        """``shapes``: (kv_heads, dim_head, value_dim) of every self-attention slot, in slot
        order; ``max_len``: the columns of every buffer (prompt bucket + new tokens)."""
        if batch < 1 or max_len < 1:
            raise ValueError(
                f"StaticCache: batch and max_len must be >= 1, got batch={batch}, max_len={max_len}"
            )
        self.max_len = max_len
        self.prefilling = True
        self.key_positions: Tensor | None = None  # None while prefilling (counted positions)
        self.columns = torch.arange(max_len, device=device)
        self.write_index = torch.zeros(batch, dtype=torch.long, device=device)
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.layers = [
            StaticLayerCache(
                self,
                torch.zeros(batch, h, max_len, d, dtype=dtype, device=device),
                torch.zeros(batch, h, max_len, dv, dtype=dtype, device=device),
            )
            for h, d, dv in shapes
        ]

    def buffers(self) -> list[Tensor]:
        """Every tensor a decode step writes in place (CUDA graphs keep their addresses)."""
        kv = [t for layer in self.layers for t in (layer.k, layer.v)]
        return [*kv, self.write_index, self.key_mask]

    def begin_prefill(self) -> None:
        """The next call runs the prompts (right-padded, from column 0)."""
        self.prefilling, self.key_positions = True, None

    def begin_decode(self) -> None:
        """The next calls each add one token per row at the position given by :meth:`at`."""
        self.prefilling, self.key_positions = False, self.columns.unsqueeze(0)

    def at(self, pos: Tensor) -> None:
        """Decode: this step's token of row r goes to column ``pos[r]`` and sees columns
        0..pos[r] (in place: traceable, the buffers keep their addresses)."""
        self.write_index.copy_(pos)
        self.key_mask.copy_(self.columns <= pos.unsqueeze(-1))

    def layer(self, index: int, is_cross: bool) -> StaticLayerCache:
        """The buffers of self-attention slot `index` (cross-attention has none here)."""
        if is_cross or index >= len(self.layers):
            raise ValueError(
                f"StaticCache: slot {index} ({'cross' if is_cross else 'self'}-attention) is not "
                f"one of its {len(self.layers)} self-attention slots"
            )
        return self.layers[index]

    def extend_mask(
        self, new_mask: Tensor | None, batch: int, n: int, device: torch.device
    ) -> Tensor | None:
        """Prefill: the prompts' own mask (None: causal only); decode: the mask of the
        written columns (the new token's included)."""
        return new_mask if self.prefilling else self.key_mask

    def extend_positions(self, positions: Tensor, n: int) -> Tensor:
        """The positions of the keys attended: the new rows' (prefill), every column's
        (decode: column c holds position c)."""
        return positions if self.key_positions is None else self.key_positions

    def advance(self, n: int) -> None:
        """Nothing: the columns written are given by positions, not counted."""
