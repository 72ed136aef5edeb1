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

    def __init__(
        self,
        *,
        max_seq_len: int,
        attn_layers: AttentionLayers,
        project_in: nn.Module | None = None,
        project_out: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """``project_in`` / ``project_out`` (x-transformers 2.x): modules of your own in place
        of the input / output projections (not together with dim_in / dim_out)."""
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
        self._use_modules(project_in, project_out)

    def _use_modules(self, project_in: nn.Module | None, project_out: nn.Module | None) -> None:
        """Put the constructor's own project_in / project_out modules in place of the built ones."""
        for name, module, dim_name in (
            ("project_in", project_in, "dim_in"),
            ("project_out", project_out, "dim_out"),
        ):
            if module is None:
                continue
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"{_OWNER}: {name} must be an nn.Module (or None), got {type(module).__name__}"
                )
            if getattr(self.config, dim_name) is not None:
                raise ValueError(
                    f"{_OWNER}: pass either {dim_name} or a {name} module, not both "
                    f"(got {dim_name}={getattr(self.config, dim_name)})"
                )
            setattr(self, name, module)
        if self.probabilistic and self.config.dim_out is None and project_out is None:
            raise ValueError(
                f"{_OWNER}: probabilistic=True needs dim_out (the width of the predicted mean and "
                "variance) or a project_out module, got neither"
            )
        self._own_in = project_in is not None
        self._own_modules = project_in is not None or project_out is not None

    def config_dict(self) -> dict[str, Any]:
        """The resolved configuration as a plain dict (none for custom project_in / out)."""
        if getattr(self, "_own_modules", False):
            raise ValueError(
                f"{_OWNER}: a model built with a project_in or project_out module of your own "
                "has no configuration to save: save its state_dict instead"
            )
        return super().config_dict()

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
        same = config.use_identity_if_same_dim
        self.project_in = (
            nn.Linear(config.dim_in, dim, bias=False)
            if config.dim_in is not None and not (same and config.dim_in == dim)
            else nn.Identity()
        )
        self.attn_layers = attn_layers
        self._setup_memory(config, attn_layers)
        self._setup_pooling(config, attn_layers)
        self.probabilistic = config.probabilistic
        width = None if config.dim_out is None else config.dim_out * (1 + int(self.probabilistic))
        self.project_out = (
            nn.Linear(dim, width, bias=False)
            if width is not None and not (same and width == dim)
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
        seq_lens: Tensor | None = None,
        doc_ids: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """x (b, n, dim_in) -> (b, n, dim_out) (see the return_* flags, as TransformerWrapper).

        ``lens`` (b,): each row's number of real vectors (a mask of the first lens positions;
        not together with ``mask``). With ``cache``, x holds the whole sequence or, with
        ``input_not_include_cache=True``, only the new vectors. Other keywords (context,
        context_mask, attn_mask, prefix_attn_len) go to the stack. Packed documents:
        ``seq_lens`` (b, k) or ``doc_ids`` (b, n), as TransformerWrapper.forward.
        """
        if isinstance(cache, LayerIntermediates):
            cache = cache.cache
        if seq_lens is not None or doc_ids is not None:
            pos = self._pack(x, seq_lens, doc_ids, pos, prepend_embeds, cache, kwargs)
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
        if self.probabilistic and not return_embeddings:
            out = _mean_variance(out)
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
        own_in = getattr(self, "_own_in", False)  # a project_in module of the user's: any width
        width = x.shape[-1] if own_in and isinstance(x, Tensor) else self.dim_in
        check_float_input("x", x, 3, width, "of shape (batch, seq_len, dim_in)")
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


def _mean_variance(out: Tensor) -> Tensor:
    """(..., 2 * d) with (mean, log-variance) interleaved -> stack((mean, variance)) (2, ..., d)."""
    pairs = out.unflatten(-1, (-1, 2))
    return torch.stack((pairs[..., 0], pairs[..., 1].exp()))
