"""TransformerWrapper: token (+ position) embeddings -> AttentionLayers -> output head."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from ..cache import KVCache
from ..checks import as_token_ids, check_float_input, check_token_ids
from ..config.later import LATER_FORWARD, LATER_WRAPPER
from ..config.options import build_options, current_prefix, keyword_names, unknown_keyword
from ..config.wrapper import WrapperConfig, wrapper_keywords
from ..intermediates import LayerIntermediates
from ..nn.embeddings import AbsolutePositionalEmbedding, ScaledSinusoidalEmbedding, TokenEmbedding
from ..nn.norms import LayerNorm
from ..nn.positions.left_padding import check_seq_start_pos
from ..nn.softclamp import SoftClamp
from ..nn.z_loss import attention_z_loss
from ..optim import muon_parameters
from ..stack.layers import AttentionLayers
from .core import StackWrapper

__all__ = ["TransformerWrapper"]

#: Stack forward keywords that TransformerWrapper.forward passes itself (from its own).
_GIVEN_TO_STACK = (
    "x", "return_hiddens", "cache", "mask", "return_attn", "pos", "seq_start_pos", "seq_lens",
    "doc_ids",
)  # fmt: skip


def parse_wrapper_config(owner: str, kwargs: dict[str, Any]) -> WrapperConfig:
    """Check wrapper keyword names (later-milestone ones raise) and build the WrapperConfig."""
    valid = [*wrapper_keywords(), "attn_layers"]
    return build_options(WrapperConfig, owner, kwargs, later=LATER_WRAPPER, valid=valid)


def _slice_new(value: Any, offset: int) -> Any:
    """Drop the first `offset` positions of a per-token input (b, n, ...)."""
    if value is None or offset == 0:
        return value
    if isinstance(value, dict):
        return {k: v[:, offset:] for k, v in value.items()}
    return value[:, offset:]


class TransformerWrapper(StackWrapper, folder_model=True):
    """A token model: embeddings, the attention stack and a logits head (x-transformers API)."""

    config_class = WrapperConfig

    def __init__(
        self,
        *,
        num_tokens: int,
        max_seq_len: int,
        attn_layers: AttentionLayers,
        token_emb: nn.Module | None = None,
        to_logits: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """``token_emb``: a module of your own, token ids (b, n) -> (b, n, emb_dim), instead of
        the built-in embedding; ``to_logits``: one of your own, (..., dim) -> logits, instead of
        the built-in head (x-transformers 2.x keywords). A model with either has no
        configuration to save (save_pretrained / config_dict raise)."""
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(
                "TransformerWrapper: attn_layers must be an AttentionLayers (Encoder, Decoder, ...), "
                f"got {type(attn_layers).__name__}"
            )
        config = parse_wrapper_config(
            "TransformerWrapper", dict(num_tokens=num_tokens, max_seq_len=max_seq_len, **kwargs)
        )
        self._setup(config, attn_layers)
        self._use_modules(token_emb, to_logits)

    def _setup(self, config: WrapperConfig, attn_layers: AttentionLayers) -> None:
        """Build the embeddings and head around `attn_layers` (constructor and from_config)."""
        self.config = config
        dim = attn_layers.dim
        emb_dim = config.emb_dim or dim
        logits_dim = config.logits_dim or config.num_tokens
        if config.tie_embedding and (emb_dim != dim or logits_dim != config.num_tokens):
            p = current_prefix()
            raise ValueError(
                f"TransformerWrapper: {p}tie_embedding=True needs {p}emb_dim == dim and "
                f"{p}logits_dim == {p}num_tokens, got {p}emb_dim={emb_dim}, dim={dim}, "
                f"{p}logits_dim={logits_dim}, {p}num_tokens={config.num_tokens}"
            )
        self.num_tokens = config.num_tokens
        self.max_seq_len = config.max_seq_len
        self.emb_dim = emb_dim

        self.token_emb = TokenEmbedding(
            emb_dim, config.num_tokens, config.l2norm_embed, config.token_emb_scale
        )
        self.has_abs_pos_emb = config.has_abs_pos_emb and not attn_layers.disable_abs_pos_emb
        self.pos_emb: nn.Module | None = None
        if self.has_abs_pos_emb and config.scaled_sinu_pos_emb:
            self.pos_emb = ScaledSinusoidalEmbedding(emb_dim)
        elif self.has_abs_pos_emb:
            self.pos_emb = AbsolutePositionalEmbedding(
                emb_dim, config.max_seq_len, config.l2norm_embed
            )
        # only the learned table bounds the sequence length
        self.max_positions = (
            config.max_seq_len if isinstance(self.pos_emb, AbsolutePositionalEmbedding) else None
        )
        self.embeds = None
        if config.embed_num_tokens:
            self.embeds = nn.ModuleDict(
                {
                    f"{name}_embed": nn.Embedding(n, emb_dim)
                    for name, n in config.embed_num_tokens.items()
                }
            )
        self.post_emb_norm = (
            LayerNorm(emb_dim, eps=config.post_emb_norm_eps, bias=config.post_emb_norm_bias)
            if config.post_emb_norm
            else nn.Identity()
        )
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
        self.attn_layers = attn_layers
        self._setup_memory(config, attn_layers)
        self._setup_pooling(config, attn_layers)
        self.to_logits: nn.Module = nn.Identity()
        cap = config.logit_softclamp_value
        self.logit_softclamp = SoftClamp(cap) if cap is not None else None
        if not config.return_only_embed:
            self.to_logits = nn.Linear(dim, logits_dim, bias=False)
            self.tie_weights()

    def tie_weights(self) -> None:
        """With tie_embedding, the head's weight is the token embedding's (re-tied after a move
        off the meta device)."""
        if self.config.tie_embedding and not self.config.return_only_embed:
            self.to_logits.weight = self.token_emb.emb.weight

    def _use_modules(self, token_emb: nn.Module | None, to_logits: nn.Module | None) -> None:
        """Put the constructor's own token_emb / to_logits modules in place of the built ones."""
        c = self.config
        for name, module in (("token_emb", token_emb), ("to_logits", to_logits)):
            if module is not None and not isinstance(module, nn.Module):
                raise TypeError(
                    f"TransformerWrapper: {name} must be an nn.Module (or None), got "
                    f"{type(module).__name__}"
                )
        if token_emb is not None:
            clash = [k for k in ("tie_embedding", "l2norm_embed") if getattr(c, k)]
            clash += ["token_emb_scale"] if c.token_emb_scale is not None else []
            if clash:
                raise ValueError(
                    f"TransformerWrapper: a token_emb module of your own cannot be combined with "
                    f"{', '.join(clash)} (options of the built-in embedding)"
                )
            self.token_emb = cast(TokenEmbedding, token_emb)  # any module: ids -> embeddings
        if to_logits is not None:
            if c.tie_embedding or c.return_only_embed:
                raise ValueError(
                    "TransformerWrapper: a to_logits module of your own cannot be combined with "
                    "tie_embedding=True or return_only_embed=True (they decide the head)"
                )
            self.to_logits = to_logits
        self._own_modules = token_emb is not None or to_logits is not None

    def config_dict(self) -> dict[str, Any]:
        """The resolved configuration as a plain dict (none for custom token_emb / to_logits)."""
        if getattr(self, "_own_modules", False):
            raise ValueError(
                "TransformerWrapper: a model built with a token_emb or to_logits module of your "
                "own has no configuration to save: save its state_dict instead"
            )
        return super().config_dict()

    def muon_parameters(self) -> list[nn.Parameter]:
        """The matrices for the Muon optimiser: every 2-D projection weight of the attention and
        feed-forward layers (x-transformers 2.x's method; see ``anyformer.optim``)."""
        return muon_parameters(self)

    def forward(
        self,
        x: Tensor,
        return_embeddings: bool = False,
        return_logits_and_embeddings: bool = False,
        return_intermediates: bool = False,
        mask: Tensor | None = None,
        return_mems: bool = False,
        return_attn: bool = False,
        mems: list[Tensor] | None = None,
        mem_masks: list[Tensor] | Tensor | None = None,
        pos: Tensor | None = None,
        prepend_embeds: Tensor | None = None,
        prepend_mask: Tensor | None = None,
        embed_ids: dict[str, Tensor] | None = None,
        sum_embeds: Tensor | None = None,
        cache: KVCache | LayerIntermediates | None = None,
        input_not_include_cache: bool | None = None,
        seq_start_pos: Tensor | None = None,
        return_attn_z_loss: bool = False,
        attn_z_loss_weight: float | None = None,
        check_inputs: bool = True,
        seq_lens: Tensor | None = None,
        doc_ids: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """x (b, n) token ids -> logits (b, n, logits_dim) (see the return_* flags).

        ``mems`` / ``mem_masks``: Transformer-XL memories of the previous segment (one hidden per
        self-attention execution; see AttentionLayers.forward); ``return_mems=True`` returns
        ``(out, new_mems)``, the last max_mem_len rows of memory + this segment per layer.

        With ``cache`` (from a previous call's intermediates, or a ``KVCache``), only positions
        beyond the cached ones are computed: x holds the whole sequence, or only the new tokens
        when ``input_not_include_cache=True`` (default: the constructor's keyword of that name).
        Other keywords (context, context_mask, attn_mask, prefix_attn_len) go to the stack. ``check_inputs=False`` skips the input validation
        (and its host sync on token ids): decode loops that already checked their inputs use it.
        ``seq_start_pos`` (b,): left-padded rows, whose tokens begin at that column (positions
        count from there; a cache remembers it).
        ``return_attn_z_loss``: also return the intermediates, with ``attn_z_loss`` (times
        ``attn_z_loss_weight``, default the constructor's) computed from every attention layer's
        pre-softmax logits (the explicit attention path runs for this call).
        Packed documents: ``seq_lens`` (b, k) the lengths of the documents packed from column
        0 of each row (zeros unused; later columns are padding) or ``doc_ids`` (b, n) a
        document id per token (negative: padding); each document attends only to itself and
        its positions (absolute, rotary, ALiBi, T5) restart at 0, as if run alone.
        Pooled models (``use_cls_token`` / ``average_pool_embed``) return (b, logits_dim) (or
        (b, k, logits_dim) for k CLS tokens); the intermediates hold ``last_layer_hiddens``."""
        if isinstance(cache, LayerIntermediates):
            cache = cache.cache
        if input_not_include_cache is None:
            input_not_include_cache = self.config.input_not_include_cache
        if kwargs:
            self._check_forward_kwargs(kwargs)
        if seq_lens is not None or doc_ids is not None:
            pos = self._pack(x, seq_lens, doc_ids, pos, prepend_embeds, cache, kwargs, check_inputs)
        offset = self._token_offset(cache)
        x, mask, pos, embed_ids, sum_embeds = self._prepare(
            x, mask, pos, embed_ids, sum_embeds, prepend_embeds, prepend_mask, cache, offset,
            input_not_include_cache, seq_start_pos, check_inputs,
        )  # fmt: skip
        self._check_return_mems(return_mems, cache)
        h, mask, stack_pos = self._embed(
            x, mask, pos, offset, embed_ids, sum_embeds, prepend_embeds, prepend_mask, cache,
            seq_start_pos,
        )  # fmt: skip
        h, inter = self._run_stack(
            h, mask=mask, cache=cache, pos=stack_pos, mems=mems, mem_masks=mem_masks,
            return_hiddens=return_intermediates or return_mems or return_attn_z_loss,
            return_attn=return_attn or return_attn_z_loss, seq_start_pos=seq_start_pos, **kwargs,
        )  # fmt: skip
        result = self._head(h, return_embeddings, return_logits_and_embeddings)
        if return_attn_z_loss:
            self._add_attn_z_loss(inter, attn_z_loss_weight)
            return_intermediates = True  # as x-transformers: the loss comes in the intermediates
        return self._result(
            result, inter, mems=mems, return_intermediates=return_intermediates,
            return_mems=return_mems, return_attn=return_attn,
        )  # fmt: skip

    def _prepare(
        self,
        x: Tensor,
        mask: Tensor | None,
        pos: Tensor | None,
        embed_ids: dict[str, Tensor] | None,
        sum_embeds: Tensor | None,
        prepend_embeds: Tensor | None,
        prepend_mask: Tensor | None,
        cache: KVCache | None,
        offset: int,
        input_not_include_cache: bool,
        seq_start_pos: Tensor | None,
        check_inputs: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, dict[str, Tensor] | None, Tensor | None]:
        """Step 1: check the inputs (``check_inputs=False`` keeps only the free combination
        check of seq_start_pos) and, with a cache, keep the positions it does not hold."""
        x = as_token_ids("x", x, check_inputs)
        if embed_ids:
            embed_ids = {k: as_token_ids(f"embed_ids[{k!r}]", v) for k, v in embed_ids.items()}
        if seq_start_pos is not None and prepend_embeds is not None:
            raise ValueError(
                "seq_start_pos (left padding) cannot be combined with prepend_embeds: pad the "
                "token rows on the right and pass mask instead"
            )
        if seq_start_pos is not None and check_inputs:
            width = x.shape[1] + (offset if input_not_include_cache else 0)
            check_seq_start_pos(seq_start_pos, x.shape[0], width)
        if check_inputs:
            new = 0 if input_not_include_cache else offset
            self._check_inputs(
                x, mask, pos, prepend_embeds, prepend_mask, embed_ids, sum_embeds, cache, new
            )
        if cache is None or input_not_include_cache:
            return x, mask, pos, embed_ids, sum_embeds
        x, mask, embed_ids, sum_embeds = (
            _slice_new(v, offset) for v in (x, mask, embed_ids, sum_embeds)
        )
        return x, mask, None if pos is None else pos[..., offset:], embed_ids, sum_embeds

    def _embed(
        self,
        x: Tensor,
        mask: Tensor | None,
        pos: Tensor | None,
        offset: int,
        embed_ids: dict[str, Tensor] | None,
        sum_embeds: Tensor | None,
        prepend_embeds: Tensor | None,
        prepend_mask: Tensor | None,
        cache: KVCache | None,
        seq_start_pos: Tensor | None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Step 2: token ids (the new ones) -> the stack's input (b, [p +] n, dim), its mask and
        the stack's positions (None: the stack counts them)."""
        h = self.token_emb(x)
        if self.pos_emb is not None:
            h = h + self.pos_emb(self._embedding_positions(x, pos, offset, cache, seq_start_pos))
        if self.embeds is not None:
            h = self._add_embeds(h, embed_ids or {})
        if sum_embeds is not None:
            h = h + sum_embeds
        h = self.post_emb_norm(h)
        if prepend_embeds is not None:
            h, mask = self._prepend(h, mask, prepend_embeds, prepend_mask, cache)
        stack_pos = None
        if pos is not None:
            stack_pos = self._stack_positions(pos, prepend_embeds, cache)
        if self.config.emb_frac_gradient < 1:
            frac = self.config.emb_frac_gradient
            h = h * frac + h.detach() * (1 - frac)
        return self.project_emb(self.emb_dropout(h)), mask, stack_pos

    @staticmethod
    def _embedding_positions(
        x: Tensor,
        pos: Tensor | None,
        offset: int,
        cache: KVCache | None,
        seq_start_pos: Tensor | None,
    ) -> Tensor:
        """The absolute positions of the new tokens: ``pos``, else offset..offset+n-1; left-padded
        rows count from their first token."""
        if pos is None:
            pos = torch.arange(offset, offset + x.shape[1], device=x.device)
        first = seq_start_pos
        if first is None and cache is not None:
            first = cache.seq_start_pos
        if first is not None:  # left padding: count from each row's first token
            pos = (pos - first.view(-1, 1)).clamp(min=0)
        return pos

    def _head(
        self, h: Tensor, return_embeddings: bool, return_logits_and_embeddings: bool
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Step 3: the stack's output -> logits, embeddings or both."""
        if return_logits_and_embeddings:
            return self.logits(h), h
        if return_embeddings:
            return h
        return self.logits(h)

    def attn_qk_clip_(self, intermediates: LayerIntermediates, tau: float = 100.0) -> None:
        """QK-clip (MuonClip) of the stack's attention layers: see AttentionLayers.attn_qk_clip_."""
        self.attn_layers.attn_qk_clip_(intermediates, tau)

    def logits(self, h: Tensor) -> Tensor:
        """The stack's output (b, n, dim) -> logits: the head, then logit_softclamp_value."""
        logits = self.to_logits(h)
        return logits if self.logit_softclamp is None else self.logit_softclamp(logits)

    def _add_attn_z_loss(self, inter: LayerIntermediates | None, weight: float | None) -> None:
        """Put the attention z-loss of every layer's pre-softmax logits into the intermediates."""
        inter = cast(LayerIntermediates, inter)  # return_attn_z_loss asked the stack for them
        if weight is None:
            weight = self.config.attn_z_loss_weight
        logits = cast(list[Tensor], [i.pre_softmax_attn for i in inter.attn_intermediates])
        inter.attn_z_loss = attention_z_loss(logits, weight)

    def _check_forward_kwargs(self, kwargs: dict[str, Any]) -> None:
        """Keywords the stack's forward takes pass (those this forward hands it itself
        excepted); others raise, suggesting from this forward's and the stack's keywords."""
        mro = type(self.attn_layers).__mro__
        forwards = [
            c.forward for c in mro if issubclass(c, AttentionLayers) and "forward" in vars(c)
        ]
        takes = keyword_names(
            *forwards, skip=_GIVEN_TO_STACK
        )  # e.g. PrefixDecoder's and its base's
        for name in kwargs:
            if name not in takes and name not in LATER_FORWARD:
                own = keyword_names(self.forward)
                raise unknown_keyword(f"{type(self).__name__}.forward", name, [*own, *takes])

    def _check_inputs(
        self,
        x: Tensor,
        mask: Tensor | None,
        pos: Tensor | None,
        prepend_embeds: Tensor | None,
        prepend_mask: Tensor | None,
        embed_ids: dict[str, Tensor] | None,
        sum_embeds: Tensor | None,
        cache: KVCache | None,
        offset: int,
    ) -> None:
        sync = self._sync_id_check(x)
        check_token_ids("x", x, self.num_tokens, sync=sync)
        b, n = x.shape
        self._check_positions(b, n, mask, pos, cache, offset)
        self._check_prepend(prepend_embeds, prepend_mask, b, self.emb_dim, cache)
        check_float_input(
            "sum_embeds", sum_embeds, 3, self.emb_dim, "of shape (batch, seq_len, emb_dim)"
        )
        if sum_embeds is not None and tuple(sum_embeds.shape[:2]) != (b, n):
            raise ValueError(
                f"sum_embeds must have shape ({b}, {n}, {self.emb_dim}), got {tuple(sum_embeds.shape)}"
            )
        self._check_embed_ids(embed_ids, b, n, sync)

    def _sync_id_check(self, x: Tensor) -> bool:
        """Whether the token-id range check may read the ids on the host. On the CPU the read is
        free; on an accelerator a training forward (the hot loop) checks with an asynchronous
        device-side assert instead, so that no micro-step stalls on a host sync. Eval forwards
        keep the exact message (they are not the hot loop; decoding skips the check)."""
        return not isinstance(x, Tensor) or x.device.type == "cpu" or not self.training

    def _add_embeds(self, h: Tensor, embed_ids: dict[str, Tensor]) -> Tensor:
        """h plus each extra embedding of its ids, or of its default id (embed_ids_default)."""
        embeds = cast(nn.ModuleDict, self.embeds)
        for name, ids in embed_ids.items():
            h = h + embeds[f"{name}_embed"](ids)
        for name, default in self.config.embed_ids_default.items():
            if name not in embed_ids:
                h = h + cast(nn.Embedding, embeds[f"{name}_embed"]).weight[default]
        return h

    def _check_embed_ids(
        self, embed_ids: dict[str, Tensor] | None, b: int, n: int, sync: bool = True
    ) -> None:
        expected = set(self.config.embed_num_tokens)
        given = set(embed_ids or {})
        optional = set(self.config.embed_ids_default)
        if not given <= expected or not expected - optional <= given:
            also = f"; {sorted(optional)} may be omitted" if optional else ""
            raise ValueError(
                f"embed_ids must give ids for exactly the embeddings {sorted(expected)} "
                f"(embed_num_tokens{also}), got {sorted(given)}"
            )
        for name, ids in (embed_ids or {}).items():
            check_token_ids(
                f"embed_ids[{name!r}]", ids, self.config.embed_num_tokens[name], sync=sync
            )
            if tuple(ids.shape) != (b, n):
                raise ValueError(
                    f"embed_ids[{name!r}] must have shape ({b}, {n}), got {tuple(ids.shape)}"
                )
