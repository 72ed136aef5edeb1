"""AttentionLayers and its presets: Encoder, Decoder, PrefixDecoder, CrossAttender."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..cache import KVCache
from ..checks import check_attn_mask, check_float_input, check_mask
from ..config.later import LATER_FORWARD, raise_if_later
from ..config.options import from_dict, keyword_names, to_dict, unknown_keyword
from ..config.stack import StackConfig, parse_stack_config
from ..config.structure import per_layer
from ..intermediates import LayerIntermediates
from ..nn.documents import PackedDocuments, packed_documents
from ..nn.init import reset_module_tree
from ..nn.masks import AttentionMask, build_attention_mask, causal_keep_mask, expand_attn_mask
from ..nn.moe import record_router_losses
from ..nn.positions import build_attn_bias, build_rotary, left_padded
from ..nn.positions.alibi import check_head_positions
from ..nn.positions.left_padding import check_seq_start_pos
from ..nn.positions.rotary import CrossRotary, GivenRotary
from ..nn.softclamp import SoftClamp
from ..nn.token_dropout import drop_tokens
from .blocks import GivenAttentionBlock, StackRun
from .build import build_modules
from .composition import GivenModules, LayerModules
from .lean import loop_for
from .memory import remember
from .rows import row_positions
from .streams import build_streams

__all__ = ["AttentionLayers", "CrossAttender", "Decoder", "Encoder", "PrefixDecoder"]


class AttentionLayers(nn.Module):
    """A stack of blocks: self-attention, [cross-attention,] feedforward, `depth` times.

    Keywords are parsed once into a frozen StackConfig (``attn_*``, ``cross_attn_*``, ``ff_*``
    routed to their modules); the blocks are built here and ``forward`` only walks them.
    ``attn_factory``, ``cross_attn_factory``, ``ff_factory`` and ``norm_factory`` put given
    modules in some or all layers instead (``{layer index: module}`` or a factory
    ``(layer index) -> module | None``; the protocol is in ``anyformer.stack.composition``).
    """

    _resets_tree = True

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int = 8,
        causal: bool = False,
        cross_attend: bool = False,
        only_cross: bool = False,
        pre_norm: bool = True,
        pre_norm_has_final_norm: bool = True,
        *,
        attn_factory: LayerModules | None = None,
        cross_attn_factory: LayerModules | None = None,
        ff_factory: LayerModules | None = None,
        norm_factory: LayerModules | None = None,
        **kwargs: Any,
    ) -> None:
        """``attn_factory``: given self-attention modules, for the 'a' layers;
        ``cross_attn_factory``: given cross-attention modules, for the 'c' layers;
        ``ff_factory``: given feedforward modules, for the 'f' layers; ``norm_factory``: given
        block norms (index ``len(layers)``: the final norm). Each is a mapping {layer index:
        module} or a factory (layer index) -> module | None (None: the flag-built module)."""
        super().__init__()
        stack_args = dict(
            dim=dim,
            depth=depth,
            heads=heads,
            causal=causal,
            cross_attend=cross_attend,
            only_cross=only_cross,
            pre_norm=pre_norm,
            pre_norm_has_final_norm=pre_norm_has_final_norm,
        )
        given = GivenModules(attn_factory, cross_attn_factory, ff_factory, norm_factory)
        self._setup(parse_stack_config(type(self).__name__, stack_args, kwargs), given)

    def _setup(self, config: StackConfig, given: GivenModules | None = None) -> None:
        """Build every module from the resolved config (the constructor and from_config meet
        here); ``given``: the modules the composition keywords give instead."""
        self.config: StackConfig = config
        self.dim = config.dim
        self.depth = config.depth
        self.heads = config.heads
        self.causal = config.causal
        self.cross_attend = config.cross_attend
        self.disable_abs_pos_emb = config.disable_abs_pos_emb
        self.layer_types = config.layer_types
        self.rotary = build_rotary(config)  # shared by every self-attention layer
        blocks, final_norm, names = build_modules(
            config, self.rotary, given or GivenModules(), type(self).__name__
        )
        self.layers = nn.ModuleList(blocks)
        self.given_modules: tuple[str, ...] = names  # where the composition keywords put modules
        self.layer_dropouts = per_layer(config.layer_dropout, len(self.layer_types))
        self.final_norm = final_norm
        # softclamp_output: the soft cap on the blocks' output, before the final norm
        self.output_softclamp = (
            SoftClamp(config.softclamp_output_value) if config.softclamp_output else None
        )
        self.attn_bias = build_attn_bias(config)  # additive position bias (ALiBi, T5, ...)
        # cross-block residual-stream options (reinjection, U-Net skips, value residual,
        # condition); None for a plain stack
        self.streams = build_streams(config)
        self.set_execution_order(config.execution_order)

    def set_execution_order(self, order: tuple[int, ...] | None) -> None:
        """Blocks run in `order` (indices into self.layers; None: every block once, in order).

        Each attention execution owns one KV-cache slot (and a token-shifting block one more,
        after it), so a block run twice (weight tying, custom orders) caches twice. The plan is
        derived from the current ``self.layers`` on every forward: with the default order a
        truncated or extended ModuleList runs as it now is."""
        if order is not None:
            order = tuple(order)
            count = len(self.layers)
            if not all(type(i) is int and 0 <= i < count for i in order):
                raise ValueError(
                    f"order must hold indices into self.layers (ints in [0, {count})), got {order}"
                )
        if order is not None and order == tuple(range(len(self.layers))):
            order = None
        self._custom_order: tuple[int, ...] | None = order

    def attn_qk_clip_(self, intermediates: LayerIntermediates, tau: float = 100.0) -> None:
        """QK-clip (MuonClip, Kimi K2) of every attention layer from the intermediates of a
        forward with return_attn=True (paired with the attention executions in order)."""
        blocks = [self.layers[i] for i, _ in self.execution_plan]
        attns = [b for b in blocks if getattr(b, "layer_type", "f") in ("a", "c")]
        inters = intermediates.attn_intermediates or []
        if len(attns) != len(inters):
            raise ValueError(
                f"attn_qk_clip_: {len(inters)} attention intermediates for {len(attns)} attention "
                "executions: pass the intermediates of a forward of this stack with return_attn=True"
            )
        for block, inter in zip(attns, inters, strict=True):
            qk_clip = getattr(block.branch, "qk_clip_", None)
            if qk_clip is None:
                raise ValueError(
                    f"attn_qk_clip_: the given attention module {type(block.branch).__name__} "
                    "has no qk_clip_"
                )
            qk_clip(inter, tau)

    @property
    def execution_plan(self) -> tuple[tuple[int, int | None], ...]:
        """(index into self.layers, KV-cache slot or None) per execution, in order."""
        blocks: list[Any] = list(self.layers)  # Blocks (cache_slots)
        order: Sequence[int] | None = self._custom_order
        if order is None:
            order = range(len(blocks))
        elif order and max(order) >= len(blocks):
            raise ValueError(
                f"{type(self).__name__}: the execution order {order} (layers_execute_order / "
                f"weight_tie_layers) indexes layers up to {max(order)}, but self.layers now holds "
                f"{len(blocks)} blocks: call set_execution_order(...) for the new layers"
            )
        plan, slot = [], 0
        for index in order:
            used = blocks[index].cache_slots
            plan.append((index, slot if used else None))
            slot += used
        return tuple(plan)

    @property
    def uses_positions(self) -> bool:
        """Whether some current block reads positions (or the stack adds a position bias)."""
        return self.attn_bias is not None or any(block.reads_positions for block in self.layers)

    @classmethod
    def from_config(cls, config: dict[str, Any] | StackConfig) -> AttentionLayers:
        """Rebuild a stack from ``config_dict()`` (or a StackConfig): same modules, same keys."""
        if isinstance(config, StackConfig):
            target, parsed = cls, config
        else:
            data = dict(config)
            target = _stack_class(data.pop("class", cls.__name__), cls)
            parsed = from_dict(StackConfig, data)
        stack = target.__new__(target)
        nn.Module.__init__(stack)
        stack._setup(parsed)
        return stack

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (e.g. after building on the meta device)."""
        reset_module_tree(self)

    @property
    def can_pack_documents(self) -> bool:
        """Whether forward takes packed documents (seq_lens / doc_ids): not with token shift,
        which would carry a token across a document boundary."""
        return all(getattr(block, "token_shift", None) is None for block in self.layers)

    @property
    def can_cache_kv(self) -> bool:
        """Whether cached decoding is possible (causal self-attention). Not with xPos beside
        memory key/values or rotated values: their outputs depend on xPos's centre (the
        sequence's middle), which a cache would fix at its first call. Nor with a given
        attention module that does not say it caches (``can_cache_kv = True``)."""
        attn, positions = self.config.attention, self.config.positions
        xpos_centred = positions.rotary_xpos and (attn.num_mem_kv > 0 or attn.rotary_embed_values)
        return self.causal and not xpos_centred and self._given_attention_caches()

    def _given_attention_caches(self) -> bool:
        """Whether every given attention module can decode with a KV cache."""
        return all(b.can_cache_kv for b in self.layers if isinstance(b, GivenAttentionBlock))

    def attention_paths(self) -> tuple[dict[str, Any], ...]:
        """Per attention layer (in build order): its index in ``layers``, type ('a' self, 'c'
        cross), kernel path ('fused' / 'explicit'; 'given' for a given module, whose kernel
        the stack does not know), the options that force the explicit path, and whether it
        caches keys/values in cached decoding. A sliding-window layer adds ``sliding_window``
        (W), ``window_kernel`` ('banded': O(n W) blockwise on the fused path; 'masked': masked
        full attention on the explicit one) and ``kv_cache_keys`` (W: its ring buffer)."""
        can_cache = self.can_cache_kv
        paths = []
        for index, block in enumerate(self.layers):
            if block.layer_type not in ("a", "c"):
                continue
            given = isinstance(block, GivenAttentionBlock)
            branch: Any = block.branch  # an Attention, or a given module
            path = {
                "layer": index,
                "type": block.layer_type,
                "path": "given" if given else branch.path,
                "explicit_because": () if given else branch.explicit_reasons,
                "kv_cache": can_cache,
            }
            window = None if given else getattr(branch, "sliding_window", None)
            if window is not None:
                # O(n W) blockwise on the fused path; masked full attention on the explicit one
                path["sliding_window"] = window
                path["window_kernel"] = "banded" if branch.path == "fused" else "masked"
                path["kv_cache_keys"] = window  # a ring buffer of the last W keys
            paths.append(path)
        return tuple(paths)

    def config_dict(self) -> dict[str, Any]:
        """The resolved configuration as a plain dict (not for a stack with given modules)."""
        if self.given_modules:
            raise ValueError(
                f"{type(self).__name__}.config_dict: {', '.join(self.given_modules)} are given "
                "modules (attn_factory / cross_attn_factory / ff_factory / norm_factory), which "
                "a config cannot describe: save the state_dict and rebuild the stack with the "
                "same factories"
            )
        return {"class": type(self).__name__, **to_dict(self.config)}

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        return_hiddens: bool = False,
        cache: KVCache | LayerIntermediates | None = None,
        return_attn: bool = False,
        pos: Tensor | None = None,
        seq_start_pos: Tensor | None = None,
        self_attn_kv_mask: Tensor | None = None,
        mems: list[Tensor] | None = None,
        mem_masks: list[Tensor] | Tensor | None = None,
        cache_age: int | None = None,
        rotary_pos_emb: Any = None,
        seq_lens: Tensor | None = None,
        doc_ids: Tensor | PackedDocuments | None = None,
        condition: Tensor | None = None,
        causal: bool | None = None,
        context_pos: Tensor | None = None,
        self_attn_additional_kv: list[Any] | LayerIntermediates | None = None,
        additional_kv_mask: Tensor | None = None,
        detach_additional_kv: bool = False,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, LayerIntermediates]:
        """x (b, n, dim) -> (b, n, dim); with return_hiddens, also LayerIntermediates.

        ``mems``: Transformer-XL memories, one (b, m, dim) hidden per self-attention execution
        (as ``LayerIntermediates.hiddens`` of the previous segment); every query also attends to
        them, as rows before x. ``mem_masks``: their (b, m) key mask (one, or one per layer).
        ``cache_age`` (with a cache): x holds more rows than the new ones (x-transformers passes
        the whole sequence); only its last ``cache_age`` rows are computed.

        With a ``cache``, x holds only the new positions and ``mask`` only their key mask
        (the cache remembers the rest). ``pos`` (n,) or (b, n): the rows' positions (default:
        0..n-1 after what the cache holds), handed to every self-attention layer.
        ``seq_start_pos`` (b,): left-padded rows, row r's tokens begin at column
        seq_start_pos[r] (earlier columns are hidden keys; positions count from there; a cache
        remembers it). ``self_attn_kv_mask`` (b, n): the self-attention key mask, in place of
        ``mask``. Packed documents: ``seq_lens`` (b, k) the lengths of the documents packed
        from column 0 of each row (zeros unused; later columns are padding), or ``doc_ids``
        (b, n) a document id per token (negative: padding); tokens attend only within their
        document and positions restart at 0 in each (``anyformer.nn.documents``).
        ``causal=True`` (x-transformers 2.x): this call of a bidirectional stack (Encoder) is
        causal, as ``attn_mask`` (uncached, without mems); ``causal=False`` is accepted only on a
        bidirectional stack. ``context_pos`` (m,) or (b, m) (x-transformers 2.x): the context's
        positions; cross-attention then rotates its queries to the rows' positions and the
        context's keys to these (rotary stacks; with a cache, on its first call).
        ``self_attn_additional_kv`` (x-transformers 2.x): external (keys, values) pairs
        (b, kv_heads, m, dim_head), one per self-attention execution, that each also attends to
        (a list aligned to the top layers, or another stack's LayerIntermediates: its cached
        keys/values); ``additional_kv_mask`` (b, m) their key mask; ``detach_additional_kv``.
        """
        self._check_kwargs(kwargs)
        others = dict(cache=cache, mems=mems, mem_masks=mem_masks, cache_age=cache_age)
        others.update(seq_start_pos=seq_start_pos, rotary_pos_emb=rotary_pos_emb)
        attn_mask, pos = self._per_call(x, attn_mask, pos, causal, seq_lens, doc_ids, others)
        x, run = self._prepare(
            x,
            context,
            mask,
            context_mask,
            attn_mask,
            cache,
            pos,
            seq_start_pos,
            self_attn_kv_mask,
            mems,
            mem_masks,
            cache_age,
            rotary_pos_emb,
            return_hiddens,
            return_attn,
        )
        extra = dict(additional_kv=self_attn_additional_kv, additional_kv_mask=additional_kv_mask)
        self._attach(x, run, context_pos, condition, extra, detach_additional_kv)
        x = self._run(x, run)
        return self._collect(x, run)

    def _per_call(
        self,
        x: Tensor,
        attn_mask: Tensor | None,
        pos: Tensor | None,
        causal: bool | None,
        seq_lens: Tensor | None,
        doc_ids: Any,
        others: dict[str, Any],
    ) -> tuple[Tensor | None, Tensor | None]:
        """The checks and masks of this call's options: per-head ALiBi positions, a ``causal``
        override, packed documents (``others``: the cache/mems/positions arguments they refuse)."""
        cache, mems = others["cache"], others["mems"]
        if pos is not None and pos.ndim == 3:
            refused = {
                "rotary positions": self.rotary is not None or others["rotary_pos_emb"] is not None,
                "a KV cache": cache is not None,
                "seq_start_pos": others["seq_start_pos"] is not None,
                "mems": mems is not None,
                "packed documents (seq_lens / doc_ids)": seq_lens is not None
                or doc_ids is not None,
                "a layer that reads positions": any(b.reads_positions for b in self.layers),
            }
            check_head_positions(pos, self.attn_bias, x.shape[0], x.shape[1], refused)
        if causal is not None and causal != self.causal:
            attn_mask = self._causal_for_this_call(causal, x, attn_mask, cache, mems)
        if self.streams is not None:
            self.streams.refuse_mems(mems)
        if seq_lens is not None or doc_ids is not None:
            attn_mask, pos = self._packed(x, seq_lens, doc_ids, attn_mask, pos, others)
        return attn_mask, pos

    def _attach(
        self,
        x: Tensor,
        run: Any,
        context_pos: Tensor | None,
        condition: Tensor | None,
        extra: dict[str, Any],
        detach_additional_kv: bool,
    ) -> None:
        """What this call adds to the run: cross-attention rotation, the streams' condition,
        external keys/values (``extra``: ``additional_kv`` and ``additional_kv_mask``)."""
        if context_pos is not None or getattr(run.cache, "context_rotated", False):
            run.cross_rotary = self._cross_rotary(run, context_pos)
        if self.streams is not None:
            self.streams.prepare(x, run, condition)
        elif condition is not None:
            raise ValueError(
                "condition was given but this stack has no adaptive norm or layerscale "
                "(use_adaptive_layernorm / use_adaptive_rmsnorm / use_adaptive_layerscale)"
            )
        if extra["additional_kv"] is not None:
            run.additional_kv = self._additional_kv(extra["additional_kv"], detach_additional_kv)
            run.additional_kv_mask = extra["additional_kv_mask"]

    def _additional_kv(self, given: Any, detach: bool) -> Iterator[tuple[Tensor, Tensor] | None]:
        """One entry per self-attention execution: the last ones given go to the top layers
        (x-transformers 2.x), the bottom layers get None when fewer are given."""
        if isinstance(given, LayerIntermediates):
            given = [i.cached_kv for i in given.attn_intermediates if i.layer_type == "a"]
        if not isinstance(given, (list, tuple)):
            raise TypeError(
                "self_attn_additional_kv must be a list of (keys, values) pairs or a "
                f"LayerIntermediates, got {type(given).__name__}"
            )
        layers = list(self.layers)
        count = sum(layers[index].layer_type == "a" for index, _ in self.execution_plan)
        entries = list(given)[-count:] if count else []
        if detach:
            entries = [None if e is None else (e[0].detach(), e[1].detach()) for e in entries]
        return iter([None] * (count - len(entries)) + entries)

    def _prepare(
        self,
        x: Tensor,
        context: Tensor | None,
        mask: Tensor | None,
        context_mask: Tensor | None,
        attn_mask: Tensor | None,
        cache: KVCache | LayerIntermediates | None,
        pos: Tensor | None,
        seq_start_pos: Tensor | None,
        self_attn_kv_mask: Tensor | None,
        mems: list[Tensor] | None,
        mem_masks: list[Tensor] | Tensor | None,
        cache_age: int | None,
        rotary_pos_emb: Any,
        return_hiddens: bool,
        return_attn: bool,
    ) -> tuple[Tensor, StackRun]:
        """Step 1: check forward's inputs and resolve them (cache, memories, key mask, left
        padding) into the rows to compute and the StackRun every block reads."""
        if isinstance(cache, LayerIntermediates):
            cache = cache.cache
        if cache_age is not None:
            x, mask = self._last_rows(x, mask, cache, cache_age)
        b, n = self._check_inputs(x, context, mask, context_mask, attn_mask, cache)
        given = None if rotary_pos_emb is None else self._given_rotary(rotary_pos_emb, b, n, mems)
        if mems is not None or mem_masks is not None:
            cache = remember(self, mems, mem_masks, cache, attn_mask, x, given)
        if self.training and self.config.cross_attn_tokens_dropout > 0 and context is not None:
            context, context_mask = drop_tokens(
                context, context_mask, self.config.cross_attn_tokens_dropout
            )
        if (
            cache is None
            and return_hiddens
            and self.causal
            and attn_mask is None
            and not self.training
            and (pos is None or pos.ndim < 3)  # positions per ALiBi head: uncached
        ):
            # returned in the intermediates to continue decoding from; training needs none
            cache = KVCache() if self._given_attention_caches() else None
        if self_attn_kv_mask is not None:
            check_mask("self_attn_kv_mask", self_attn_kv_mask, (b, n), "batch, seq_len")
            mask = self_attn_kv_mask
        if seq_start_pos is not None or (cache is not None and cache.seq_start_pos is not None):
            pos, mask = self._left_padding(seq_start_pos, pos, mask, cache, b, n)
        run = self._stack_run(x, mask, attn_mask, cache, pos, given, context, context_mask)
        run.collect, run.return_attn = return_hiddens or return_attn, return_attn
        return x, run

    def _packed(
        self,
        x: Tensor,
        seq_lens: Tensor | None,
        doc_ids: Tensor | PackedDocuments | None,
        attn_mask: Tensor | None,
        pos: Tensor | None,
        others: dict[str, Any],
    ) -> tuple[Tensor, Tensor | None]:
        """Packed documents -> (attn_mask, pos): attention within each document (causality is
        added with the other masks), positions counted from each document's first token
        (``pos``, when given, is kept)."""
        owner = type(self).__name__
        for name, value in others.items():
            if value is not None:
                raise ValueError(
                    f"{owner}: packed documents (seq_lens / doc_ids) cannot be combined with "
                    f"{name}: run the documents of a packed row in one uncached call"
                )
        if not self.can_pack_documents:
            raise ValueError(
                f"{owner}: packed documents (seq_lens / doc_ids) need a stack without "
                "shift_tokens (a shifted token would cross from one document into the next)"
            )
        check_float_input("x", x, 3, self.dim, "of shape (batch, seq_len, dim)")
        b, n = x.shape[:2]
        docs = cast(PackedDocuments, packed_documents(seq_lens, doc_ids, b, n, x.device))
        keep = docs.keep_mask(causal=False)  # the causal part joins in build_attention_mask
        if attn_mask is not None:
            check_attn_mask(attn_mask, b, self.heads, n, n)
            keep = keep & expand_attn_mask(attn_mask)
        return keep, docs.positions if pos is None else pos

    def _stack_run(
        self,
        x: Tensor,
        mask: Tensor | None,
        attn_mask: Tensor | None,
        cache: KVCache | None,
        pos: Tensor | None,
        given: GivenRotary | None,
        context: Tensor | None,
        context_mask: Tensor | None,
    ) -> StackRun:
        """The masks, positions and cache of this call, computed once for every block."""
        n = x.shape[1]
        key_mask, k_len = mask, n
        if cache is not None:
            key_mask = cache.extend_mask(mask, x.shape[0], n, x.device)
            k_len = cache.length + n
        positions = row_positions(pos, n, cache, x.device) if self.uses_positions else None
        run = StackRun(
            self_mask=build_attention_mask(
                q_len=n,
                k_len=k_len,
                causal=self.causal,
                key_mask=key_mask,
                attn_mask=attn_mask,
                device=x.device,
            ),
            context=context,
            positions=positions,
            cache=cache,
            row_mask=mask,
        )
        if positions is not None:
            self._position_inputs(run, positions, pos is None, n, k_len, given)
        if self.cross_attend:
            run.cross_mask = self._cross_mask(n, context, context_mask, cache, x.device)
        if self.config.resi_dual:
            run.dual = x * self.config.resi_dual_scale
        return run

    def _run(self, x: Tensor, run: StackRun) -> Tensor:
        """Step 2: the blocks, or a generation session's decoding loop for its cache."""
        if self.streams is not None:  # the lean loop knows only plain blocks
            return self.streams.run(self, x, run)
        plain = self.training or run.collect or run.additional_kv is not None
        lean = None if plain else loop_for(self, run.cache)
        if lean is not None and lean.usable():
            return lean(x, run)
        return self._run_blocks(x, run)

    def _collect(self, x: Tensor, run: StackRun) -> Tensor | tuple[Tensor, LayerIntermediates]:
        """Step 3: the final norm, the cache advanced past the rows, the intermediates."""
        if run.collect:
            run.layer_hiddens.append(x)
        if self.output_softclamp is not None:
            x = self.output_softclamp(x)
        if run.condition is not None:
            x = _final_norm(self.final_norm, x, run.condition)
        else:
            x = x + self.final_norm(run.dual) if run.dual is not None else self.final_norm(x)
        if run.cache is not None:
            run.cache.advance(x.shape[1])
        if not run.collect:
            return x
        inter = LayerIntermediates(
            hiddens=run.hiddens,
            last_hidden=x,
            attn_intermediates=run.attn_intermediates,
            layer_hiddens=run.layer_hiddens,
            cache=run.cache,
        )
        return x, record_router_losses(inter, run.router_losses)

    def _run_blocks(self, x: Tensor, run: StackRun) -> Tensor:
        """The blocks in execution order (stochastic depth skips some while training)."""
        layers = list(self.layers)
        plan = self.execution_plan
        skip = self._dropped_layers(run.cache, plan) if self.training else None
        for step, (index, slot) in enumerate(plan):
            if skip is not None and skip[step]:
                if run.collect and layers[index].layer_type == "a":
                    run.hiddens.append(x)  # keeps one hidden (XL memory) per attention execution
                continue
            x = layers[index](x, run, slot)
        return x

    @staticmethod
    def _last_rows(
        x: Tensor, mask: Tensor | None, cache: KVCache | None, cache_age: int
    ) -> tuple[Tensor, Tensor | None]:
        """cache_age: keep the last `cache_age` rows of x (and of a mask over all of x)."""
        n = x.shape[1] if isinstance(x, Tensor) and x.ndim == 3 else 0
        if cache is None:
            raise ValueError("cache_age needs a cache (it counts the rows a cached call computes)")
        if isinstance(cache_age, bool) or not isinstance(cache_age, int) or not 1 <= cache_age <= n:
            raise ValueError(
                f"cache_age must be an int in [1, {n}] (the rows of x), got {cache_age!r}"
            )
        if mask is not None and mask.shape[-1] == n:
            mask = mask[:, -cache_age:]
        return x[:, -cache_age:], mask

    def _dropped_layers(
        self, cache: KVCache | None, plan: tuple[tuple[int, int | None], ...]
    ) -> list[bool] | None:
        """Stochastic depth: which executions of the plan skip their layer this forward."""
        rates = self.layer_dropouts
        probs = [rates[index] if index < len(rates) else 0.0 for index, _ in plan]
        if not any(probs):
            return None
        if cache is not None:
            raise ValueError(
                "layer_dropout skips layers while training, which a KV cache cannot follow: "
                "decode in eval mode (model.eval())"
            )
        return (torch.rand(len(probs)) < torch.tensor(probs)).tolist()

    def _left_padding(
        self,
        seq_start_pos: Tensor | None,
        pos: Tensor | None,
        mask: Tensor | None,
        cache: KVCache | None,
        b: int,
        n: int,
    ) -> tuple[Tensor | None, Tensor | None]:
        """seq_start_pos (given, or remembered by the cache) -> per-row positions, key mask."""
        start = 0 if cache is None else cache.length
        if seq_start_pos is not None:
            check_seq_start_pos(seq_start_pos, b, start + n)
            if cache is not None:
                cache.seq_start_pos = seq_start_pos
        elif cache is not None and cache.seq_start_pos is not None:
            seq_start_pos = cache.seq_start_pos
        else:
            return pos, mask  # no row is left-padded
        return left_padded(seq_start_pos, start, n, pos, mask)

    def _given_rotary(self, value: Any, b: int, n: int, mems: list[Tensor] | None) -> GivenRotary:
        """Check forward's ``rotary_pos_emb`` against this stack and the rows of this call."""
        if self.rotary is None:
            raise ValueError(
                f"rotary_pos_emb was given but this {type(self).__name__} has no rotary "
                "positions: build it with rotary_pos_emb=True"
            )
        given = GivenRotary.parse(value, b, self.rotary.head_dim)
        mem_len = mems[0].shape[1] if isinstance(mems, (list, tuple)) and mems else 0
        given.check_rows(n + mem_len)
        return given

    def _position_inputs(
        self,
        run: StackRun,
        positions: Tensor,
        counted: bool,
        n: int,
        k_len: int,
        given: GivenRotary | None,
    ) -> None:
        """Rotary angles and the additive position bias, computed once for every layer.
        ``positions``: the run's positions; ``counted``: they are the default ones,
        consecutive after the cache; ``given``: rotary frequencies passed to forward (only
        with rotary, as _given_rotary checks)."""
        cache, rotary = run.cache, self.rotary
        offset = (0 if cache is None else cache.length) if counted else None
        if rotary is not None:
            run.rotary = (
                given.angles(n, 0, rotary.head_dim)
                if given is not None
                else rotary.angles(positions, offset, cache)
            )
        if self.attn_bias is None:
            return
        span = k_len if counted else None  # |q - k| < span (None: measured from the positions)
        if cache is None:
            k_pos = positions
        elif counted and cache.key_positions is None:
            k_pos = torch.arange(k_len, device=positions.device).unsqueeze(0)
        else:
            k_pos, span = cache.extend_positions(positions, n), None
        run.self_mask = run.self_mask.with_bias(self.attn_bias(positions, k_pos, span))

    def _cross_rotary(self, run: StackRun, context_pos: Tensor | None) -> CrossRotary:
        """forward's ``context_pos`` -> the rotation of cross-attention's queries and keys (the
        keys only when computed now: a cache keeps them rotated from its first call)."""
        rotary, cache, context = self.rotary, run.cache, run.context
        if not self.cross_attend:
            raise ValueError(
                f"context_pos was given but this {type(self).__name__} has no cross-attention "
                "(cross_attend=True)"
            )
        if rotary is None or run.rotary is None:
            raise ValueError(
                "context_pos rotates cross-attention with the stack's rotary positions: build "
                "it with rotary_pos_emb=True"
            )
        cross = self.config.cross_attention
        for name, on in (
            ("rotary_xpos=True", rotary.xpos_zeta is not None),
            ("cross_attn_differential=True", cross.differential),
            (
                "cross_attn_use_latent_kv / cross_attn_use_latent_q",
                cross.use_latent_kv or cross.use_latent_q,
            ),
        ):
            if on:
                raise ValueError(f"context_pos cannot be combined with {name}")
        if cache is not None and cache.length > 0:  # the context's keys are cached
            if context_pos is not None and not cache.context_rotated:
                raise ValueError(
                    "context_pos must be given on the cache's first call, when the context's "
                    "keys are computed (they are cached unrotated)"
                )
            return CrossRotary(run.rotary, None)
        m = 0 if context is None else context.shape[1]
        if (
            not isinstance(context_pos, Tensor)
            or context_pos.ndim not in (1, 2)
            or context_pos.shape[-1] != m
            or context_pos.is_complex()
            or context_pos.dtype == torch.bool
        ):
            got = context_pos.shape if isinstance(context_pos, Tensor) else context_pos
            raise ValueError(
                f"context_pos must be a real tensor of shape ({m},) or (batch, {m}) (the "
                f"context's positions), got {got}"
            )
        if cache is not None:
            cache.context_rotated = True
        pos = context_pos if context_pos.ndim == 2 else context_pos.unsqueeze(0)
        return CrossRotary(run.rotary, rotary.angles(pos))

    @staticmethod
    def _cross_mask(
        n: int,
        context: Tensor | None,
        context_mask: Tensor | None,
        cache: KVCache | None,
        device: torch.device,
    ) -> AttentionMask:
        """Cross-attention mask; a cache keeps the context's mask from its first call."""
        if cache is not None and cache.length > 0:
            context_mask, m = cache.context_mask, cache.context_len
        else:
            m = 0 if context is None else context.shape[1]  # _check_inputs asked for a context
            if cache is not None:
                cache.context_mask, cache.context_len = context_mask, m
        return build_attention_mask(
            q_len=n, k_len=m, causal=False, key_mask=context_mask, device=device
        )

    def _causal_for_this_call(
        self,
        causal: bool,
        x: Tensor,
        attn_mask: Tensor | None,
        cache: KVCache | LayerIntermediates | None,
        mems: list[Tensor] | None,
    ) -> Tensor:
        """forward(causal=True) on a bidirectional stack: the causal keep-mask, joined to
        ``attn_mask`` (its keys are exactly the rows of x: no cache, no mems)."""
        owner = f"{type(self).__name__}.forward"
        if not causal:
            raise ValueError(
                f"{owner}: causal=False cannot make this causal stack bidirectional for one call "
                "(its layers are built causal): use an Encoder, or leave causal unset"
            )
        if cache is not None or mems is not None:
            raise ValueError(
                f"{owner}: causal=True on a bidirectional stack cannot be combined with cache= "
                "or mems= (an Encoder keeps no KV cache): use a Decoder"
            )
        if not isinstance(x, Tensor) or x.ndim != 3:
            return cast(Tensor, attn_mask)  # the input checks reject x
        keep = causal_keep_mask(x.shape[1], x.shape[1], x.device)
        return keep if attn_mask is None else attn_mask & keep

    def _check_kwargs(self, kwargs: dict[str, Any]) -> None:
        owner = f"{type(self).__name__}.forward"
        raise_if_later(owner, kwargs, LATER_FORWARD)
        if kwargs:
            valid = keyword_names(AttentionLayers.forward, skip=("x",))
            raise unknown_keyword(owner, next(iter(kwargs)), valid)

    def _check_inputs(
        self,
        x: Tensor,
        context: Tensor | None,
        mask: Tensor | None,
        context_mask: Tensor | None,
        attn_mask: Tensor | None,
        cache: KVCache | None,
    ) -> tuple[int, int]:
        check_float_input("x", x, 3, self.dim, "of shape (batch, seq_len, dim)")
        b, n = x.shape[:2]
        check_mask("mask", mask, (b, n), "batch, seq_len")
        if cache is not None:
            if not self.causal:
                raise ValueError(
                    f"cache: only causal stacks (Decoder) can decode with a KV cache; "
                    f"this {type(self).__name__} is not causal"
                )
            if attn_mask is not None:
                raise ValueError("attn_mask cannot be combined with cache (cached decoding)")
        k_len = n + (cache.length if cache is not None else 0)
        check_attn_mask(attn_mask, b, self.heads, n, k_len)
        if not self.cross_attend:
            if context is not None:
                raise ValueError(
                    f"context was given but this {type(self).__name__} has cross_attend=False"
                )
            return b, n
        cached_cross = cache is not None and cache.length > 0
        if context is None and not cached_cross:
            raise ValueError(
                f"context is required: this {type(self).__name__} has cross_attend=True "
                "(pass context=(batch, context_len, dim_context))"
            )
        if context is not None:
            dim_context = self.config.cross_attention.dim_context or self.dim
            check_float_input(
                "context", context, 3, dim_context, "of shape (batch, context_len, dim_context)"
            )
            if context.shape[0] != b:
                raise ValueError(
                    f"context must have batch size {b} (as x), got shape {tuple(context.shape)}"
                )
            check_mask("context_mask", context_mask, (b, context.shape[1]), "batch, context_len")
        return b, n


class Encoder(AttentionLayers):
    """Bidirectional stack (BERT-style)."""

    def __init__(self, **kwargs: Any) -> None:
        if "causal" in kwargs:
            raise TypeError("Encoder: causal is fixed to False; use Decoder for a causal stack")
        super().__init__(causal=False, **kwargs)


class Decoder(AttentionLayers):
    """Causal stack (GPT-style)."""

    def __init__(self, **kwargs: Any) -> None:
        if "causal" in kwargs:
            raise TypeError(
                "Decoder: causal is fixed to True; use Encoder for a bidirectional stack"
            )
        super().__init__(causal=True, **kwargs)


class PrefixDecoder(AttentionLayers):
    """Bidirectional over a prefix of `prefix_attn_len` positions, causal after it."""

    def __init__(self, **kwargs: Any) -> None:
        if "causal" in kwargs:
            raise TypeError("PrefixDecoder: causality is set by prefix_attn_len on forward")
        super().__init__(causal=False, **kwargs)

    def forward(
        self,
        x: Tensor,
        *args: Any,
        attn_mask: Tensor | None = None,
        prefix_attn_len: int | Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, LayerIntermediates]:
        """As AttentionLayers.forward; keys j < prefix_attn_len are visible to every query."""
        b, n, device = x.shape[0], x.shape[1], x.device
        prefix_mask = causal_keep_mask(n, n, device)[None, None]
        if prefix_attn_len is not None:
            if isinstance(prefix_attn_len, int):
                if prefix_attn_len < 0:
                    raise ValueError(f"prefix_attn_len must be >= 0, got {prefix_attn_len}")
                prefix_attn_len = torch.full((b,), prefix_attn_len, device=device)
            elif not isinstance(prefix_attn_len, Tensor) or prefix_attn_len.shape != (b,):
                raise ValueError(
                    f"prefix_attn_len must be an int or a (batch,) tensor with batch={b}, "
                    f"got {prefix_attn_len!r}"
                )
            in_prefix = torch.arange(n, device=device) < prefix_attn_len.view(b, 1, 1, 1)
            prefix_mask = prefix_mask | in_prefix
        if attn_mask is not None:
            check_attn_mask(attn_mask, b, self.heads, n, n)
            prefix_mask = prefix_mask & expand_attn_mask(attn_mask)
        kwargs["attn_mask"] = prefix_mask
        return super().forward(x, *args, **kwargs)


class CrossAttender(AttentionLayers):
    """Blocks of cross-attention and feedforward only (queries attend to a context)."""

    def __init__(self, **kwargs: Any) -> None:
        for name in ("cross_attend", "only_cross"):
            if name in kwargs:
                raise TypeError(f"CrossAttender: {name} is fixed to True")
        super().__init__(cross_attend=True, only_cross=True, **kwargs)


def _final_norm(norm: nn.Module, x: Tensor, condition: Tensor) -> Tensor:
    """The final norm of a stack with adaptive norms (it takes the condition)."""
    return norm(x, condition) if getattr(norm, "takes_condition", False) else norm(x)


def _stack_class(name: str, base: type) -> type:
    """The AttentionLayers subclass called `name` (Decoder, Encoder, ...)."""
    found = {AttentionLayers.__name__: AttentionLayers}
    todo = [AttentionLayers]
    while todo:
        for sub in todo.pop().__subclasses__():
            found[sub.__name__] = sub
            todo.append(sub)
    cls = found.get(name)
    if cls is None or not issubclass(cls, base):
        raise ValueError(
            f"{base.__name__}.from_config: 'class' must name a {base.__name__} class "
            f"({sorted(found)}), got {name!r}"
        )
    return cls
