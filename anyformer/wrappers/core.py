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
from ..config.pooling import PoolingOptions
from ..intermediates import LayerIntermediates
from ..nn.documents import PackedDocuments, packed_documents
from ..nn.moe import mixture_summary
from ..serialization import PretrainedMixin
from ..stack.layers import AttentionLayers
from .configured import StackedModel
from .pooling import pool_output, prepend_cls_tokens

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

    Subclasses call ``_setup_memory`` (and ``_setup_pooling``) in their setup and own
    ``attn_layers``.
    """

    attn_layers: AttentionLayers
    max_positions: int | None
    num_cls_tokens: int = 0  # 0: no CLS tokens (the cls_token parameter: _setup_pooling)
    average_pool_embed: bool = False

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

    def _setup_pooling(self, options: PoolingOptions, attn_layers: AttentionLayers) -> None:
        """CLS tokens (num_cls_tokens, dim) or the mean pool (``anyformer.wrappers.pooling``)."""
        self.average_pool_embed = options.average_pool_embed
        self.num_cls_tokens = options.num_cls_tokens if options.use_cls_token else 0
        self.cls_token: nn.Parameter | None = None
        if self.num_cls_tokens:
            self.cls_token = nn.Parameter(torch.empty(self.num_cls_tokens, attn_layers.dim))
            self._reset_own_parameters()

    @property
    def pools(self) -> bool:
        """Whether the output is pooled (use_cls_token / average_pool_embed)."""
        return bool(self.num_cls_tokens) or self.average_pool_embed

    def _reset_own_parameters(self) -> None:
        """Memory tokens start as standard normal vectors, CLS tokens as N(0, 0.02^2) (as in
        x-transformers)."""
        if self.memory_tokens is not None:
            nn.init.normal_(self.memory_tokens)
        cls_token = getattr(self, "cls_token", None)
        if cls_token is not None:
            nn.init.normal_(cls_token, std=0.02)

    @property
    def can_cache_kv(self) -> bool:
        """Whether generate can decode with a KV cache (a causal stack; memory tokens only in
        front: interspersed ones would need a new memory block inside the cache; no pooled
        output, which reads the whole sequence)."""
        return (
            self.attn_layers.can_cache_kv
            and self.memory_tokens_interspersed_every is None
            and not self.pools
        )

    @property
    def can_pack_documents(self) -> bool:
        """Whether forward takes packed documents (seq_lens / doc_ids): the stack's condition,
        and no memory tokens (the documents of a row would share them)."""
        return self.attn_layers.can_pack_documents and not self.num_memory_tokens

    @property
    def can_cache_beyond_max_seq_len(self) -> bool:
        """Whether cached decoding stays exact when generation slides past max_seq_len: not
        with absolute positions (they shift) nor memory tokens (the window moves them)."""
        return self.can_cache_kv and not self.has_abs_pos_emb and not self.num_memory_tokens

    def capabilities(self) -> dict[str, Any]:
        """What the chosen options allow (SPEC: no silent capability loss): whether every
        attention layer runs the fused kernel, KV caching, and per attention layer its path
        (``AttentionLayers.attention_paths``). Interspersed memory tokens turn the KV cache off.
        With mixture-of-experts layers, ``mixture_of_experts`` describes them (``mixture_summary``)."""
        paths = self.attn_layers.attention_paths()
        caps = {
            "fused_attention": all(p["path"] == "fused" for p in paths),
            "kv_cache": self.can_cache_kv,
            # a sliding window moves absolute positions, and the memory tokens' distance
            "kv_cache_beyond_max_seq_len": self.can_cache_beyond_max_seq_len,
            # forward's seq_lens / doc_ids (not with token shift or memory tokens)
            "packed_documents": self.can_pack_documents,
            "attention": paths,
        }
        experts = mixture_summary(self.attn_layers)
        return caps if experts is None else {**caps, "mixture_of_experts": experts}

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
        pos = pos if pos.ndim >= 2 else pos.unsqueeze(0)
        if pos.ndim == 3 and prepend_embeds is not None:
            raise ValueError(
                "pos of shape (b, alibi_num_heads, n) (positions per ALiBi head) cannot be "
                "combined with prepend_embeds"
            )
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
        if isinstance(pos, Tensor) and pos.ndim == 3:
            self._check_head_positions(pos)  # the stack checks its shape
        elif pos is not None:
            check_positions(pos, b, n, self.max_positions)

    def _check_head_positions(self, pos: Tensor) -> None:
        """``pos`` (b, alibi_num_heads, n): positions per ALiBi head (the stack's ALiBi only)."""
        if pos.dtype != torch.long:
            raise ValueError(f"pos must be a torch.long tensor, got {pos.dtype}")
        refused = {
            "absolute positions (use_abs_pos_emb=False or max_seq_len=0)": self.max_positions
            is not None
            or getattr(self, "pos_emb", None) is not None,
            "memory tokens (num_memory_tokens)": getattr(self, "memory_tokens", None) is not None,
            "cls tokens (use_cls_token)": bool(getattr(self, "num_cls_tokens", 0)),
        }
        for name, on in refused.items():
            if on:
                raise ValueError(
                    "pos of shape (b, alibi_num_heads, n) (positions per ALiBi head) cannot be "
                    f"combined with {name}"
                )

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

    def _pack(
        self,
        x: Tensor,
        seq_lens: Tensor | None,
        doc_ids: Tensor | None,
        pos: Tensor | None,
        prepend_embeds: Tensor | None,
        cache: KVCache | None,
        kwargs: dict[str, Any],
        check: bool = True,
    ) -> Tensor | None:
        """Packed documents (``seq_lens`` (b, k) or ``doc_ids`` (b, n), see
        ``anyformer.nn.documents``): the stack gets them, resolved, in ``kwargs``; returns the
        positions, restarting at 0 in every document (``pos`` when given). ``check=False``
        skips the value checks (host reads)."""
        if seq_lens is None and doc_ids is None:
            return pos
        owner = type(self).__name__
        for name, value in (("prepend_embeds", prepend_embeds), ("cache", cache)):
            if value is not None:
                raise ValueError(
                    f"{owner}: packed documents (seq_lens / doc_ids) cannot be combined with {name}"
                )
        if self.num_memory_tokens:
            raise ValueError(
                f"{owner}: packed documents (seq_lens / doc_ids) cannot be combined with memory "
                "tokens (num_memory_tokens): each document would need its own"
            )
        if not isinstance(x, Tensor) or x.ndim < 2:
            return pos  # the input checks reject x
        b, n = x.shape[:2]
        docs = packed_documents(seq_lens, doc_ids, b, n, x.device, check)
        kwargs["doc_ids"] = cast(PackedDocuments, docs)  # checked: the stack takes it as it is
        return cast(PackedDocuments, docs).positions if pos is None else pos

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
        """CLS and memory tokens in, the stack, memory tokens out, pooling: (h, intermediates
        or None)."""
        if self.pools:
            h, mask, pos = self._pool_input(h, mask, pos, cache)
        pool_mask = mask
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
        if self.pools:
            h, rest = pool_output(h, pool_mask, self.num_cls_tokens, self.average_pool_embed)
            if inter is not None:
                inter.last_layer_hiddens = rest
        return h, inter

    def _pool_input(
        self, h: Tensor, mask: Tensor | None, pos: Tensor | None, cache: KVCache | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """A pooled output reads the whole sequence (no cache); CLS tokens go in front, at
        positions 0..k-1 (``pos`` shifted by k)."""
        if cache is not None:
            raise ValueError(
                f"{type(self).__name__}: use_cls_token / average_pool_embed pool the whole "
                "sequence, which a cached call does not compute: call without cache="
            )
        if not self.num_cls_tokens:
            return h, mask, pos
        h, mask = prepend_cls_tokens(h, mask, cast(nn.Parameter, self.cls_token))
        if pos is not None:
            k = self.num_cls_tokens
            head = torch.arange(k, device=pos.device).expand(pos.shape[0], k)
            pos = torch.cat((head, pos + k), dim=1)
        return h, mask, pos

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
