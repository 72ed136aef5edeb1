"""StackWrapper: what the token and the continuous wrapper share between their input embedding
and their output head.

Prepended embeddings, memory tokens (in front, or again every N positions), Transformer-XL
memories (``mems`` in, ``return_mems`` out, ``shift_mem_down``), the call of the attention
stack with or without a KV cache, the input checks both make (``_check_positions``) and the
x-transformers return conventions. Subclasses check and embed their input, then call
``_prepend`` / ``_run_stack`` / ``_result``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from ..cache import KVCache
from ..checks import check_float_input, check_mask
from ..config.memory import MemoryOptions
from ..config.options import current_prefix
from ..intermediates import LayerIntermediates
from ..serialization import PretrainedMixin
from ..stack.layers import AttentionLayers
from .configured import StackedModel

__all__ = ["StackWrapper", "check_positions", "memory_layout"]


def memory_layout(
    rows: int, num_memory: int, every: int | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(own, memory): long index tensors into the (rows + num_memory * blocks) stack rows, of
    the sequence's own rows (rows,) and of the memory rows (num_memory * blocks,); a block of
    memory rows stands before row 0 and (with ``every``) before every row r with
    r % every == 0. Built from the sizes alone (no boolean masks: static shapes for compile)."""
    period = max(rows, 1) if every is None else every
    blocks = max(-(-rows // period), 1)
    r = torch.arange(rows, device=device)
    own = r + num_memory * (r // period + 1)
    slot = torch.arange(num_memory * blocks, device=device)
    memory = (slot // num_memory) * (period + num_memory) + slot % num_memory
    return own, memory


def check_positions(pos: Tensor, b: int, n: int, max_positions: int | None) -> None:
    """``pos``: a torch.long tensor (n,) or (b, n); with a learned position table of
    ``max_positions`` rows, every position in [0, max_positions)."""
    if (
        not isinstance(pos, Tensor)
        or pos.dtype != torch.long
        or pos.ndim not in (1, 2)
        or pos.shape[-1] != n
    ):
        got = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(
            f"pos must be a torch.long tensor of shape ({n},) or ({b}, {n}), got {got}"
        )
    if max_positions is not None and pos.numel() and not torch.compiler.is_compiling():
        lo, hi = (int(v) for v in torch.aminmax(pos))
        if lo < 0 or hi >= max_positions:
            raise ValueError(
                f"pos holds position {lo if lo < 0 else hi}, outside [0, {max_positions}) of "
                "the absolute positional embedding (max_seq_len)"
            )


class StackWrapper(StackedModel, PretrainedMixin, nn.Module):
    """Base of the wrappers around an AttentionLayers stack (see the module docstring).

    Subclasses call ``_setup_memory`` in their setup and own ``attn_layers``.
    """

    attn_layers: AttentionLayers
    max_positions: int | None

    def _setup_memory(self, options: MemoryOptions, attn_layers: AttentionLayers) -> None:
        owner = type(self).__name__
        if options.memory_tokens_interspersed_every is not None and not attn_layers.causal:
            raise ValueError(
                f"{owner}: {current_prefix()}memory_tokens_interspersed_every needs a causal "
                "stack (Decoder): the memory blocks of later positions would be visible to "
                "earlier ones"
            )
        self.max_mem_len = options.max_mem_len
        self.shift_mem_down = options.shift_mem_down
        self.num_memory_tokens = options.memory_token_count
        self.memory_tokens_interspersed_every = options.memory_tokens_interspersed_every
        self.memory_tokens: nn.Parameter | None = None
        if self.num_memory_tokens:
            self.memory_tokens = nn.Parameter(torch.empty(self.num_memory_tokens, attn_layers.dim))
            self._reset_own_parameters()

    def _reset_own_parameters(self) -> None:
        """Memory tokens start as standard normal vectors (as in x-transformers)."""
        if self.memory_tokens is not None:
            nn.init.normal_(self.memory_tokens)

    @property
    def can_cache_kv(self) -> bool:
        """Whether generate can decode with a KV cache (a causal stack; memory tokens only in
        front: interspersed ones would need a new memory block inside the cache)."""
        return self.attn_layers.can_cache_kv and self.memory_tokens_interspersed_every is None

    @property
    def can_cache_beyond_max_seq_len(self) -> bool:
        """Whether cached decoding stays exact when generation slides past max_seq_len: not
        with absolute positions (they shift) nor memory tokens (the window moves them)."""
        return self.can_cache_kv and not self.has_abs_pos_emb and not self.num_memory_tokens

    def capabilities(self) -> dict[str, Any]:
        """What the chosen options allow (SPEC: no silent capability loss): whether every
        attention layer runs the fused kernel, KV caching, and per attention layer its path
        (``AttentionLayers.attention_paths``). Interspersed memory tokens turn the KV cache off."""
        paths = self.attn_layers.attention_paths()
        return {
            "fused_attention": all(p["path"] == "fused" for p in paths),
            "kv_cache": self.can_cache_kv,
            # a sliding window moves absolute positions, and the memory tokens' distance
            "kv_cache_beyond_max_seq_len": self.can_cache_beyond_max_seq_len,
            "attention": paths,
        }

    # ------------------------------------------------------------------ forward pieces

    @staticmethod
    def _token_offset(cache: KVCache | None) -> int:
        """Sequence positions the cache holds (its rows minus prepended / memory rows)."""
        return 0 if cache is None else cache.length - cache.num_prepended

    def _prepend(
        self,
        h: Tensor,
        mask: Tensor | None,
        prepend_embeds: Tensor,
        prepend_mask: Tensor | None,
        cache: KVCache | None,
    ) -> tuple[Tensor, Tensor | None]:
        b, p = prepend_embeds.shape[:2]
        h = torch.cat((prepend_embeds.to(h.dtype), h), dim=1)
        if prepend_mask is not None or mask is not None:
            ones = torch.ones(b, h.shape[1], dtype=torch.bool, device=h.device)
            prepend_mask = ones[:, :p] if prepend_mask is None else prepend_mask
            mask = ones[:, p:] if mask is None else mask
            mask = torch.cat((prepend_mask, mask), dim=1)
        if cache is not None:
            cache.num_prepended = p
        return h, mask

    @staticmethod
    def _stack_positions(
        pos: Tensor, prepend_embeds: Tensor | None, cache: KVCache | None
    ) -> Tensor:
        """Token positions (n,) / (b, n) -> positions in the stack's sequence, where prepended
        embeddings (and memory rows, in a cache) take the first places."""
        pos = pos if pos.ndim == 2 else pos.unsqueeze(0)
        if prepend_embeds is not None:
            b, p = prepend_embeds.shape[:2]
            head = torch.arange(p, device=pos.device).expand(max(b, pos.shape[0]), p)
            return torch.cat((head, (pos + p).expand(head.shape[0], -1)), dim=1)
        if cache is not None and cache.num_prepended:
            return pos + cache.num_prepended
        return pos

    def _check_positions(
        self,
        b: int,
        n: int,
        mask: Tensor | None,
        pos: Tensor | None,
        cache: KVCache | None,
        offset: int,
    ) -> None:
        """The checks both wrappers make of an input of b rows and n positions: against the
        cache (``offset``: the positions x leaves out, 0 when x holds the whole sequence), the
        mask, the absolute positions' length, and ``pos`` (shape, and its range where a learned
        position table bounds it)."""
        if cache is not None and offset >= n:
            raise ValueError(
                f"x has {n} positions but the cache already holds {offset}: pass the whole "
                "sequence including new ones, or input_not_include_cache=True with only new ones"
            )
        check_mask("mask", mask, (b, n), "batch, seq_len")
        start = offset if cache is None else self._token_offset(cache)
        if (
            self.max_positions is not None
            and pos is None
            and start + n - offset > self.max_positions
        ):
            raise ValueError(
                f"sequence length {start + n - offset} exceeds max_seq_len={self.max_positions} "
                "of the absolute positional embedding (use a longer max_seq_len, or "
                "use_abs_pos_emb=False with relative positions)"
            )
        if pos is not None:
            check_positions(pos, b, n, self.max_positions)

    def _check_prepend(
        self,
        prepend_embeds: Tensor | None,
        prepend_mask: Tensor | None,
        b: int,
        width: int,
        cache: KVCache | None,
    ) -> None:
        check_float_input(
            "prepend_embeds", prepend_embeds, 3, width, "of shape (batch, prepend_len, emb_dim)"
        )
        if prepend_embeds is not None:
            if prepend_embeds.shape[0] != b:
                raise ValueError(
                    f"prepend_embeds must have batch size {b}, got shape "
                    f"{tuple(prepend_embeds.shape)}"
                )
            if cache is not None and cache.length > 0:
                raise ValueError("prepend_embeds can only be given on the first (uncached) call")
            check_mask(
                "prepend_mask", prepend_mask, (b, prepend_embeds.shape[1]), "batch, prepend_len"
            )
        elif prepend_mask is not None:
            raise ValueError("prepend_mask was given without prepend_embeds")

    def _insert_memory(
        self,
        h: Tensor,
        mask: Tensor | None,
        pos: Tensor | None,
        cache: KVCache | None,
        kwargs: dict[str, Any],
    ) -> tuple[Tensor, Tensor | None, Tensor | None, tuple[Tensor, Tensor] | None]:
        """Put the memory tokens among the rows of h (b, n, d): in front on the first call
        (none on cached calls: the cache holds them), or before every N-th row. Returns h, mask,
        stack positions and the layout (memory_layout's index pair; None when nothing was
        inserted)."""
        every = self.memory_tokens_interspersed_every
        if cache is not None and cache.length > 0:
            if every is not None:
                raise ValueError(
                    f"{type(self).__name__}: memory_tokens_interspersed_every cannot decode "
                    "with a KV cache (can_cache_kv is False): call without cache="
                )
            return h, mask, pos, None
        if every is not None and pos is not None:
            raise ValueError(
                "pos cannot be combined with memory_tokens_interspersed_every: the memory blocks "
                "stand at fixed columns, so every row must use the positions 0..n-1"
            )
        b, n, _ = h.shape
        m = self.num_memory_tokens
        layout = memory_layout(n, m, every, h.device)
        own, memory = layout
        total = n + memory.shape[0]
        out = h.new_empty(b, total, h.shape[-1])
        out[:, own] = h
        tokens = cast(nn.Parameter, self.memory_tokens)  # set: the caller checked
        out[:, memory] = tokens.to(h.dtype).repeat(memory.shape[0] // m, 1)
        if mask is not None:
            full = torch.ones(b, total, dtype=torch.bool, device=h.device)
            full[:, own] = mask
            mask = full
        if pos is not None:  # memory rows first, then the rows at their positions + m
            head = torch.arange(m, device=pos.device).expand(pos.shape[0], m)
            pos = torch.cat((head, pos + m), dim=1)
        if kwargs.get("seq_start_pos") is not None:
            raise ValueError(
                "seq_start_pos (left padding) cannot be combined with memory tokens (the padding "
                "would stand between them and the tokens): pad on the right and pass mask"
            )
        if cache is not None:
            cache.num_prepended += m
        return out, mask, pos, layout

    def _run_stack(
        self,
        h: Tensor,
        *,
        mask: Tensor | None,
        cache: KVCache | None,
        pos: Tensor | None,
        mems: list[Tensor] | None,
        mem_masks: Any,
        return_hiddens: bool,
        return_attn: bool,
        **kwargs: Any,
    ) -> tuple[Tensor, LayerIntermediates | None]:
        """Memory tokens in, the stack, memory tokens out: (h, intermediates or None)."""
        layout = None
        if self.memory_tokens is not None:
            h, mask, pos, layout = self._insert_memory(h, mask, pos, cache, kwargs)
        mems = self._shift_mems(mems)
        if mems is not None or mem_masks is not None:
            kwargs.update(mems=mems, mem_masks=mem_masks)
        want = return_hiddens or return_attn
        out = self.attn_layers(
            h,
            mask=mask,
            cache=cache,
            return_hiddens=return_hiddens,
            return_attn=return_attn,
            pos=pos,
            **kwargs,
        )
        h, inter = out if want else (out, None)
        if layout is not None:
            if inter is not None:
                inter.memory_tokens = h.index_select(1, layout[1])
            h = h.index_select(1, layout[0])
        return h, inter

    def _check_return_mems(self, return_mems: bool, cache: KVCache | None) -> None:
        if return_mems and cache is not None and cache.length > 0:
            raise ValueError(
                "return_mems needs the hidden states of the whole segment, but a cached call "
                "computes only the new positions: call without a filled cache"
            )

    def _shift_mems(self, mems: list[Tensor] | None) -> list[Tensor] | None:
        """shift_mem_down = k: layer i reads the memory layer i + k left (the last k layers
        read the first k memories)."""
        if mems is None or not self.shift_mem_down:
            return mems
        k = self.shift_mem_down
        return [*mems[k:], *mems[:k]]

    def _new_mems(self, inter: LayerIntermediates, mems: list[Tensor] | None) -> list[Tensor]:
        """Per self-attention execution: the memory it read + the segment's hiddens (all it
        attended to), the last max_mem_len rows (all for max_mem_len=0), detached."""
        hiddens = inter.hiddens
        mems = self._shift_mems(mems)
        if mems is not None:
            hiddens = [torch.cat(pair, dim=-2) for pair in zip(mems, hiddens)]
        keep = self.max_mem_len
        return [(t[..., -keep:, :] if keep else t).detach() for t in hiddens]

    def _result(
        self,
        result: Any,
        inter: LayerIntermediates | None,
        *,
        mems: list[Tensor] | None,
        return_intermediates: bool,
        return_mems: bool,
        return_attn: bool,
    ) -> Any:
        """x-transformers' return conventions: (out, mems), (out, intermediates) or
        (out, attention maps)."""
        if inter is None:  # the stack was asked for none of them
            return result
        if return_mems:
            new_mems = self._new_mems(inter, mems)
            if not return_intermediates:
                return result, new_mems
            inter.mems = new_mems
        if return_intermediates:
            return result, inter
        if return_attn:
            return result, [i.post_softmax_attn for i in inter.attn_intermediates]
        return result
