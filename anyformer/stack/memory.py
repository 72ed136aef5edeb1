"""Transformer-XL memories (https://arxiv.org/abs/1901.02860): the hidden states a previous
segment fed each self-attention layer, attended to as rows before the current ones.

The stack writes their keys and values at the start of a KV cache (each layer's own pre-norm,
projections and positions, as if they were earlier rows) and then runs the segment as a cached
step: queries see every memory row (masked by ``mem_masks``) and the segment causally. Relative
schemes (rotary, ALiBi, T5) thus see the memory at its true distance, and a segment with the
previous segment's memories equals one pass over both where the memory covers the past.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from ..cache import KVCache
from ..checks import check_mask
from .rows import row_positions

if TYPE_CHECKING:
    from ..nn.positions.rotary import GivenRotary, RotaryAngles, RotaryEmbedding

__all__ = ["MemoryStack", "remember", "self_attention_executions"]


class MemoryStack(Protocol):
    """What memories read of a stack (AttentionLayers has it; this module names no stack class)."""

    @property
    def layers(self) -> nn.ModuleList: ...

    @property
    def execution_plan(self) -> tuple[tuple[int, int | None], ...]: ...

    @property
    def dim(self) -> int: ...

    @property
    def uses_positions(self) -> bool: ...

    @property
    def rotary(self) -> RotaryEmbedding | None: ...


def self_attention_executions(stack: MemoryStack) -> list[tuple[int, int]]:
    """(block index, cache slot) of every self-attention execution, in order."""
    layers = list(stack.layers)
    return [
        (i, s)
        for i, s in stack.execution_plan
        if s is not None and layers[i].layer_type == "a"  # self-attention always has a slot
    ]


def remember(
    stack: MemoryStack,
    mems: Sequence[Tensor] | None,
    mem_masks: Sequence[Tensor] | Tensor | None,
    cache: KVCache | None,
    attn_mask: Tensor | None,
    x: Tensor,
    given_rotary: GivenRotary | None = None,
) -> KVCache:
    """A cache whose first rows are the memories' keys/values (a new one unless given empty).
    ``given_rotary``: forward's rotary_pos_emb, whose rows before x's are the memories'."""
    if mems is None:
        raise ValueError("mem_masks was given without mems")
    executions = self_attention_executions(stack)
    b, d = x.shape[0], stack.dim
    if not isinstance(mems, (list, tuple)) or len(mems) != len(executions):
        got = len(mems) if isinstance(mems, (list, tuple)) else type(mems).__name__
        raise ValueError(
            f"mems must be a list of one (batch, mem_len, {d}) tensor per self-attention layer "
            f"execution ({len(executions)}), got {got}"
        )
    m = _check_mems(mems, b, d)
    if attn_mask is not None:
        raise ValueError("attn_mask cannot be combined with mems (Transformer-XL memories)")
    if cache is not None and cache.length > 0:
        raise ValueError(
            "mems can only be given with an empty cache (the first call of a segment): "
            "the cache holds them afterwards"
        )
    mask = _memory_mask(mem_masks, len(mems), b, m)
    cache = KVCache() if cache is None else cache
    if m == 0:
        return cache
    cache.extend_mask(mask, b, m, x.device)
    rows: Tensor | RotaryAngles | None = None
    if stack.uses_positions:
        rows = row_positions(None, m, cache, x.device)
        rotary = stack.rotary
        if rotary is not None and given_rotary is not None:  # the rows before the segment's
            rows = given_rotary.angles(m, x.shape[1], rotary.head_dim)
        elif rotary is not None:
            rows = rotary.angles(rows, 0, cache)  # what self-attention's position module reads
    for (index, slot), mem in zip(executions, mems):
        block: Any = stack.layers[index]  # an attention block (blocks.py)
        block.remember(mem.to(x.dtype), rows, cache, slot)
    cache.advance(m)
    cache.num_prepended += m  # rows that are not tokens of the current segment
    return cache


def _check_mems(mems: Sequence[Tensor], b: int, d: int) -> int:
    if not mems:  # a stack without self-attention returns mems=[]: no memories
        return 0
    first = mems[0]
    for i, mem in enumerate(mems):
        if (
            not isinstance(mem, Tensor)
            or not mem.is_floating_point()
            or mem.ndim != 3
            or mem.shape[0] != b
            or mem.shape[2] != d
            or mem.shape[1] != first.shape[1]
        ):
            got = tuple(mem.shape) if isinstance(mem, Tensor) else type(mem).__name__
            raise ValueError(
                f"mems[{i}] must be a float tensor of shape ({b}, mem_len, {d}) with the same "
                f"mem_len for every layer, got {got}"
            )
    return first.shape[1]


def _memory_mask(
    mem_masks: Sequence[Tensor] | Tensor | None, count: int, b: int, m: int
) -> Tensor | None:
    """One (b, m) key mask for the memories (a list must hold the same mask for every layer)."""
    if mem_masks is None:
        return None
    if isinstance(mem_masks, Tensor):
        check_mask("mem_masks", mem_masks, (b, m), "batch, mem_len")
        return mem_masks
    if not isinstance(mem_masks, (list, tuple)) or len(mem_masks) != count:
        raise ValueError(
            f"mem_masks must be a (batch, mem_len) mask or a list of {count} (one per "
            f"self-attention layer execution), got {type(mem_masks).__name__}"
        )
    for i, mask in enumerate(mem_masks):
        check_mask(f"mem_masks[{i}]", mask, (b, m), "batch, mem_len")
    if not mem_masks:
        return None
    first = mem_masks[0]
    if any(mask is not first and not torch.equal(mask, first) for mask in mem_masks[1:]):
        raise ValueError(
            "mem_masks must be the same for every layer (the memories of one segment share "
            "their padding); per-layer masks that differ are not supported"
        )
    return first
