"""ContinuousTransformerWrapper: real-valued vectors in, vectors out, through an AttentionLayers
stack (x-transformers' ``continuous`` module). Everything after the input embedding is the token
wrapper's code path (StackWrapper): prepended embeddings, memory tokens, Transformer-XL memories,
the KV cache and the return conventions."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..cache import KVCache
from ..checks import check_float_input, check_non_empty
from ..config.continuous import ContinuousConfig
from ..config.options import build_options
from ..intermediates import LayerIntermediates
from ..nn.embeddings import AbsolutePositionalEmbedding, ScaledSinusoidalEmbedding
from ..nn.norms import LayerNorm
from ..stack.layers import AttentionLayers
from .core import StackWrapper

__all__ = ["ContinuousTransformerWrapper"]

_OWNER = "ContinuousTransformerWrapper"


class ContinuousTransformerWrapper(StackWrapper, folder_model=True):
    """x (b, n, dim_in) -> (b, n, dim_out): project in, [+ positions], the stack, project out."""

    config_class = ContinuousConfig

    def __init__(self, *, max_seq_len: int, attn_layers: AttentionLayers, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(
                f"{_OWNER}: attn_layers must be an AttentionLayers (Encoder, Decoder, ...), "
                f"got {type(attn_layers).__name__}"
            )
        valid = [*ContinuousConfig.__dataclass_fields__, "attn_layers"]
        config = build_options(
            ContinuousConfig, _OWNER, dict(max_seq_len=max_seq_len, **kwargs), valid=valid
        )
        self._setup(config, attn_layers)

    def _setup(self, config: ContinuousConfig, attn_layers: AttentionLayers) -> None:
        self.config = config
        dim = attn_layers.dim
        self.max_seq_len = config.max_seq_len
        self.dim_in = config.dim_in or dim
        self.dim_out = config.dim_out or dim
        self.has_abs_pos_emb = config.has_abs_pos_emb and not attn_layers.disable_abs_pos_emb
        self.pos_emb: nn.Module | None = None
        if self.has_abs_pos_emb and config.scaled_sinu_pos_emb:
            self.pos_emb = ScaledSinusoidalEmbedding(dim)
        elif self.has_abs_pos_emb:
            self.pos_emb = AbsolutePositionalEmbedding(dim, config.max_seq_len)
        self.max_positions = (
            config.max_seq_len if isinstance(self.pos_emb, AbsolutePositionalEmbedding) else None
        )
        self.post_emb_norm = LayerNorm(dim) if config.post_emb_norm else nn.Identity()
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.project_in = (
            nn.Linear(config.dim_in, dim, bias=False)
            if config.dim_in is not None
            else nn.Identity()
        )
        self.attn_layers = attn_layers
        self._setup_memory(config, attn_layers)
        self.project_out = (
            nn.Linear(dim, config.dim_out, bias=False)
            if config.dim_out is not None
            else nn.Identity()
        )

    def forward(
        self,
        x: Tensor,
        return_embeddings: bool = False,
        return_intermediates: bool = False,
        return_mems: bool = False,
        mask: Tensor | None = None,
        lens: Tensor | None = None,
        return_attn: bool = False,
        mems: list[Tensor] | None = None,
        mem_masks: list[Tensor] | Tensor | None = None,
        pos: Tensor | None = None,
        prepend_embeds: Tensor | None = None,
        prepend_mask: Tensor | None = None,
        cache: KVCache | LayerIntermediates | None = None,
        input_not_include_cache: bool = False,
        **kwargs: Any,
    ) -> Any:
        """x (b, n, dim_in) -> (b, n, dim_out) (see the return_* flags, as TransformerWrapper).

        ``lens`` (b,): each row's number of real vectors (a mask of the first lens positions;
        not together with ``mask``). With ``cache``, x holds the whole sequence or, with
        ``input_not_include_cache=True``, only the new vectors. Other keywords (context,
        context_mask, attn_mask, prefix_attn_len) go to the stack.
        """
        if isinstance(cache, LayerIntermediates):
            cache = cache.cache
        offset = self._token_offset(cache)
        mask = self._check_inputs(
            x, mask, lens, pos, cache, 0 if input_not_include_cache else offset
        )
        self._check_prepend(prepend_embeds, prepend_mask, x.shape[0], self.attn_layers.dim, cache)
        self._check_return_mems(return_mems, cache)
        if cache is not None and not input_not_include_cache and offset:
            x = x[:, offset:]
            mask = None if mask is None else mask[:, offset:]
            if pos is not None:
                pos = pos[..., offset:]
        n = x.shape[1]
        h = self.project_in(x)
        stack_pos = pos
        if self.pos_emb is not None:
            if pos is None:
                pos = torch.arange(offset, offset + n, device=x.device)
            h = h + self.pos_emb(pos)
        h = self.post_emb_norm(h)
        if prepend_embeds is not None:
            h, mask = self._prepend(h, mask, prepend_embeds, prepend_mask, cache)
        if stack_pos is not None:
            stack_pos = self._stack_positions(stack_pos, prepend_embeds, cache)
        h = self.emb_dropout(h)
        h, inter = self._run_stack(
            h,
            mask=mask,
            cache=cache,
            pos=stack_pos,
            mems=mems,
            mem_masks=mem_masks,
            return_hiddens=return_intermediates or return_mems,
            return_attn=return_attn,
            **kwargs,
        )
        out = h if return_embeddings else self.project_out(h)
        return self._result(
            out,
            inter,
            mems=mems,
            return_intermediates=return_intermediates,
            return_mems=return_mems,
            return_attn=return_attn,
        )

    def _check_inputs(
        self,
        x: Tensor,
        mask: Tensor | None,
        lens: Tensor | None,
        pos: Tensor | None,
        cache: KVCache | None,
        offset: int,
    ) -> Tensor | None:
        """Check x, mask / lens and pos; returns the mask (lens turned into one)."""
        check_float_input("x", x, 3, self.dim_in, "of shape (batch, seq_len, dim_in)")
        check_non_empty("x", x, "batch >= 1, seq_len >= 1")
        b, n = x.shape[:2]
        self._check_positions(b, n, mask, pos, cache, offset)
        if lens is not None:
            if mask is not None:
                raise ValueError("pass either mask or lens, not both")
            if (
                not isinstance(lens, Tensor)
                or tuple(lens.shape) != (b,)
                or lens.is_floating_point()
            ):
                raise ValueError(
                    f"lens must be a ({b},) integer tensor (real positions per row), got "
                    f"{tuple(lens.shape) if isinstance(lens, Tensor) else type(lens).__name__}"
                )
            mask = torch.arange(n, device=x.device) < lens.to(x.device)[:, None]
        return mask
