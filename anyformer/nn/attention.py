"""Attention: projections (fused q/k/v where shapes allow), heads, cache, then the kernel.

Everything optional is decided at construction (see AttentionConfig): the kernel path, grouped
key/value heads, qk-norm, prepended memory/zero keys, the explicit-path hooks (talking heads,
sparse top-k), and the head-output modules (tensor product, head scale, head gate, value gate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor, nn

from ..cache import LayerKVCache
from ..config.attention import AttentionConfig
from ..config.later import LATER_ATTENTION
from ..config.options import build_options
from .additional_kv import prepend_additional_kv
from .attend import Attend, Intermediates
from .attend_past import restrict_to_window
from .attention_sink import AttentionSink
from .differential import DifferentialHeads, SubheadRotary
from .gates import HeadGate, HeadScale, ValueGate, attention_on_attention
from .latent_attention import LatentQKV
from .masks import AttentionMask, build_attention_mask
from .memory_kv import PrependedKV
from .output_gate import OutputGate
from .positions.data_dependent_alibi import DataDependentAlibi, PerRowDataDependentAlibi
from .positions.rotary import CrossRotary
from .qk_clip import qk_clip_
from .qk_norm import QKNorm, QKRMSNorm
from .sliding_window import restrict_to_sliding_window
from .softclamp import SoftClamp
from .sparse_topk import SparseTopK
from .talking_heads import TalkingHeads
from .tensor_product import TensorProduct

if TYPE_CHECKING:
    from .positions.rotary import RotaryAngles, RotaryEmbedding

__all__ = ["Attention", "FusedQKV", "SplitQKV"]


class FusedQKV(nn.Module):
    """One (dim -> q + k [+ v]) projection; with a separate context it slices the weight.

    ``sizes``: (q_dim, k_dim, v_dim), or (q_dim, k_dim) when the values are the keys (shared_kv);
    ``heads``/``kv_heads``: how many query and key/value heads those rows hold.
    """

    def __init__(
        self,
        dim: int,
        sizes: tuple[int, ...],
        bias: bool = False,
        heads: int = 1,
        kv_heads: int = 1,
    ) -> None:
        super().__init__()
        self.sizes = tuple(sizes)
        self.heads, self.kv_heads = heads, kv_heads
        self.to_qkv = nn.Linear(dim, sum(sizes), bias=bias)

    def _slice(self, part: slice) -> tuple[Tensor, Tensor | None]:
        bias = self.to_qkv.bias
        return self.to_qkv.weight[part], None if bias is None else bias[part]

    def forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        q_dim = self.sizes[0]
        if context is None:
            q, k, *v = self.to_qkv(x).split(self.sizes, dim=-1)
        else:
            q = nn.functional.linear(x, *self._slice(slice(None, q_dim)))
            kv = nn.functional.linear(context, *self._slice(slice(q_dim, None)))
            k, *v = kv.split(self.sizes[1:], dim=-1)
        return q, k, v[0] if v else k

    def queries(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, *self._slice(slice(None, self.sizes[0])))


class SplitQKV(nn.Module):
    """Queries from x, keys/values from a context of another width (dim_context).

    ``sizes``: as FusedQKV's.
    """

    def __init__(
        self,
        dim: int,
        dim_context: int,
        sizes: tuple[int, ...],
        bias: bool = False,
        heads: int = 1,
        kv_heads: int = 1,
    ) -> None:
        super().__init__()
        self.sizes = tuple(sizes)
        self.heads, self.kv_heads = heads, kv_heads
        self.to_q = nn.Linear(dim, sizes[0], bias=bias)
        self.to_kv = nn.Linear(dim_context, sum(sizes[1:]), bias=bias)

    def forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if context is None:
            raise ValueError(
                f"Attention: built with dim_context={self.to_kv.in_features}, so a `context` of "
                "that width is required"
            )
        k, *v = self.to_kv(context).split(self.sizes[1:], dim=-1)
        return self.to_q(x), k, v[0] if v else k

    def queries(self, x: Tensor) -> Tensor:
        return self.to_q(x)


def _parse_config(config: AttentionConfig | None, kwargs: dict[str, Any]) -> AttentionConfig:
    if config is not None:
        if kwargs:
            raise TypeError("Attention: pass either config= or keyword options, not both")
        return config
    valid = [*AttentionConfig.__dataclass_fields__, *LATER_ATTENTION, "heads", "causal"]
    return build_options(AttentionConfig, "Attention", kwargs, later=LATER_ATTENTION, valid=valid)


def _check_heads(config: AttentionConfig, heads: int) -> int:
    kv_heads = config.kv_heads_for(heads)
    if heads % kv_heads:
        raise ValueError(
            f"Attention: kv_heads ({kv_heads}) must divide heads ({heads}): each key/value head "
            "serves an equal group of query heads"
        )
    return kv_heads


def _sliding_window(config: AttentionConfig, causal: bool) -> int | None:
    """The layer's sliding window; a per-layer tuple is for a stack to resolve."""
    window = config.sliding_window
    if isinstance(window, tuple):
        raise ValueError(
            f"Attention: sliding_window={window!r} gives windows per layer, which a stack "
            "resolves (attn_sliding_window on a Decoder); a single Attention takes an int or None"
        )
    if window is not None and not causal:
        raise ValueError(
            f"Attention: sliding_window={window} is a causal window (the W keys ending at each "
            "query); it needs causal self-attention (a Decoder, or causal=True)"
        )
    return window


def _windowing(
    config: AttentionConfig, causal: bool
) -> tuple[int | None, int | None, Callable[..., AttentionMask]]:
    """(the sliding window, the farthest a query looks back: max_attend_past or
    sliding_window - 1, the function that restricts a plan to the window)."""
    sliding = _sliding_window(config, causal)
    if sliding is None:
        return None, config.max_attend_past, restrict_to_window
    return sliding, sliding - 1, restrict_to_sliding_window


def _data_dependent_alibi(
    config: AttentionConfig, dim: int, heads: int, causal: bool
) -> DataDependentAlibi | PerRowDataDependentAlibi | None:
    """The forget-gate bias of data_dependent_alibi (causal self-attention only), or None."""
    if not config.data_dependent_alibi:
        return None
    if not causal:
        raise ValueError(
            "Attention: data_dependent_alibi=True is the Forgetting Transformer's causal forget "
            "gate; it needs causal self-attention (a Decoder, or causal=True)"
        )
    kwargs = config.data_dependent_alibi_kwargs or {}
    if config.data_dependent_alibi_per_row:
        dim_head = config.data_dependent_alibi_per_row_dim_head
        return PerRowDataDependentAlibi(dim, heads, dim_head, **kwargs)
    return DataDependentAlibi(dim, heads, **kwargs)


def _missing_positions() -> ValueError:
    return ValueError(
        "Attention: positions are required (b|1, n): this layer rotates its queries and keys "
        "(it has a rotary position module)"
    )


class Attention(nn.Module):
    """Multi-head self- or cross-attention (x-transformers' ``Attention``).

    It follows the composition protocol of given attention modules (``anyformer.stack.
    composition``), so one built on its own can be given to a stack (``attn_factory``)."""

    can_cache_kv = True
    """Composition protocol: forward writes and reads the ``cache`` it is given."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        causal: bool = False,
        *,
        config: AttentionConfig | None = None,
        position: RotaryEmbedding | None = None,
        carries_scores: bool = False,
        value_residual: nn.Module | None = None,
        layer: int = 1,
        **kwargs: Any,
    ) -> None:
        """``position`` (set by a stack): a module ``(q, k, positions) -> (q, k)`` that encodes
        the tokens' positions into queries and keys (rotary); None for none.
        ``carries_scores`` (set by a stack with residual attention): forward takes the previous
        layer's pre-softmax logits as ``prev_attn`` (explicit path). ``value_residual`` (set
        by a stack with add_value_residual): the ValueResidualMix weighting this layer's values
        against the first layer's (forward's ``values``, a ValueCarry). ``layer`` (set by a
        stack): the 1-based depth of this layer (differential attention's lambda_init)."""
        super().__init__()
        c = config = _parse_config(config, kwargs)
        self.config = config
        self.heads = heads
        self.kv_heads = _check_heads(config, heads)
        self.causal = causal
        # differential attention: every query/key head is two sub-heads (q1 | q2)
        self.dim_head = config.dim_head * (2 if c.differential else 1)
        self.value_dim = config.value_dim
        q_dim, k_dim = heads * self.dim_head, self.kv_heads * self.dim_head
        v_dim, out_dim = self.kv_heads * c.value_dim, heads * c.value_dim
        sizes = (q_dim, k_dim) if c.shared_kv else (q_dim, k_dim, v_dim)
        dim_context = c.dim_context or dim
        self.qkv: FusedQKV | SplitQKV | LatentQKV = (
            FusedQKV(dim, sizes, c.qkv_bias, heads, self.kv_heads)
            if dim_context == dim
            else SplitQKV(dim, dim_context, sizes, c.qkv_bias, heads, self.kv_heads)
        )
        if c.use_latent_q or c.use_latent_kv:
            self.qkv = self._latent_qkv(dim, dim_context, position is not None)
        # multi-head latent self-attention: the cache holds the latent (see LatentQKV)
        self.latent_cache = isinstance(self.qkv, LatentQKV) and self.qkv.caches_latent
        self.qk_norm = (
            QKNorm(heads, self.kv_heads, c.dim_head, c.qk_norm_groups, c.qk_norm_dim_scale)
            if c.qk_norm
            else None
        )
        self.qk_rmsnorm = (
            QKRMSNorm(heads, self.kv_heads, c.dim_head, c.qk_rmsnorm_eps) if c.qk_rmsnorm else None
        )
        if c.qk_norm_dim_scale and self.kv_heads != heads and position is not None:
            raise ValueError(
                "Attention: qk_norm_dim_scale=True with fewer key/value heads than heads cannot be "
                "combined with rotary positions (the key scale is folded into the queries, which "
                "rotary does not commute with)"
            )
        if c.differential and position is not None:
            position = SubheadRotary(position)  # type: ignore[assignment]
        self.position = position
        self.value_residual = value_residual
        # queries and keys rotated in one pass, before the heads are split (the common case)
        self.rotate_qk_together = (
            position is not None
            and getattr(position, "shares_qk_factors", False)
            and isinstance(self.qkv, FusedQKV)
            and self.qk_norm is None
            and self.qk_rmsnorm is None
            and not c.rotary_embed_values
        )
        # rotary_embed_values: values are rotated as keys (needs a rotary position module)
        self.rotate_values = c.rotary_embed_values and position is not None
        self.sliding_window, self.window, self.restrict = _windowing(c, causal)
        self.prepended = (
            PrependedKV(c.num_mem_kv, c.add_zero_kv, self.kv_heads, c.dim_head, c.value_dim)
            if c.num_prepended_keys
            else None
        )
        self._build_kernel_and_output(dim, heads, causal, carries_scores, layer, out_dim)
        self.reset_parameters()

    def _build_kernel_and_output(
        self, dim: int, heads: int, causal: bool, carries_scores: bool, layer: int, out_dim: int
    ) -> None:
        """The modules after the projections: sink, data-dependent ALiBi, differential heads,
        the kernel, the head-output operations, the gates and the output projection."""
        c = self.config
        self.sink = AttentionSink(heads) if c.head_learned_sink else None
        self.data_alibi = _data_dependent_alibi(c, dim, heads, causal)
        self.differential = (
            DifferentialHeads(c.dim_head, c.value_dim, layer) if c.differential else None
        )
        if c.differential and carries_scores:
            raise ValueError(
                "Attention: differential=True has two attention maps per head; residual "
                "attention (residual_attn / cross_residual_attn) carries one"
            )
        self.attend = self._build_attend(heads, carries_scores)
        self.head_ops = self._build_head_ops(dim, heads)
        self.to_v_gate = ValueGate(dim, out_dim, c.swiglu_values) if c.gate_values else None
        self.to_output_gate = (
            OutputGate(heads, c.value_dim, c.output_gate_headwise) if c.output_gate else None
        )
        self.to_out = (
            attention_on_attention(out_dim, dim, c.out_bias)
            if c.on_attn
            else nn.Linear(out_dim, dim, bias=c.out_bias)
        )

    def _latent_qkv(self, dim: int, dim_context: int, rotates: bool) -> LatentQKV:
        c = self.config
        subheads = c.latent_rope_subheads or 0
        if dim_context != dim:
            raise ValueError("Attention: latent attention needs dim_context == dim")
        if subheads >= self.heads:
            raise ValueError(
                f"Attention: latent_rope_subheads ({subheads}) must be below heads ({self.heads})"
            )
        if rotates and c.use_latent_kv and not subheads:
            raise ValueError(
                "Attention: use_latent_kv=True with rotary positions needs latent_rope_subheads "
                "(the decoupled rotary key heads; the cached latent carries no position)"
            )
        return LatentQKV(
            dim, self.heads, self.kv_heads, c.dim_head, c.value_dim,
            dim_latent_q=c.dim_latent_q, dim_latent_kv=c.dim_latent_kv, rope_subheads=subheads,
        )  # fmt: skip

    def _build_attend(self, heads: int, carries_scores: bool) -> Attend:
        c = self.config
        if c.flash and carries_scores:
            raise ValueError(
                "Attention: flash=True asks for the fused kernel, but residual attention "
                "(residual_attn / cross_residual_attn) must see the attention matrix"
            )
        return Attend(
            flash=c.flash,
            explicit=c.kernel == "explicit",
            dropout=c.dropout,
            scale=c.logit_scale,
            logit_hooks=[TalkingHeads(heads)] if c.uses_pre_talking_heads else [],
            biased_logit_hooks=[SoftClamp(c.logit_softclamp_value)] if c.softclamp_logits else [],
            masked_logit_hooks=[SparseTopK(c.sparse_topk)] if c.sparse_topk is not None else [],
            prob_hooks=[TalkingHeads(heads)] if c.uses_post_talking_heads else [],
            carries_scores=carries_scores,
        )

    def _build_head_ops(self, dim: int, heads: int) -> nn.ModuleDict:
        """(b, h, n, d_v) head outputs, (b, n, dim) input -> head outputs; in x-transformers'
        order: tensor product, head scale, head gate."""
        c = self.config
        ops = nn.ModuleDict()
        if c.tensor_product:
            ops["to_r"] = TensorProduct(dim, self.kv_heads, c.value_dim)
        if c.head_scale:
            ops["head_scale"] = HeadScale(heads)
        if c.gate_value_heads:
            ops["to_v_head_gate"] = HeadGate(dim, heads)
        return ops

    def reset_parameters(self) -> None:
        """Initialise what this module owns beyond its children's defaults."""
        out: Any = self.to_out[0] if isinstance(self.to_out, nn.Sequential) else self.to_out
        for linear in (*self.qkv.children(), out):
            if isinstance(linear, nn.Linear) and linear.bias is not None:
                nn.init.zeros_(linear.bias)  # projection biases start at zero (GPT-2, BERT)
        if self.config.zero_init_output:
            nn.init.zeros_(out.weight)

    def qk_clip_(self, pre_softmax_attn: Any, tau: float = 100.0) -> None:
        """QK-clip (MuonClip): rescale W_q / W_k in place so that every head whose largest
        logit exceeded ``tau`` would reach ``tau`` (``anyformer.nn.qk_clip``); from its
        pre-softmax logits or Intermediates (a forward with return_attn=True)."""
        qk_clip_(self, pre_softmax_attn, tau)

    @property
    def path(self) -> str:
        """'fused' or 'explicit': the kernel path this layer runs (return_attn aside)."""
        return self.attend.path

    @property
    def explicit_reasons(self) -> tuple[str, ...]:
        """The options that put this layer on the explicit path (empty: fused)."""
        reasons = list(self.config.explicit_reasons)
        if self.attend.carries_scores:
            reasons.append("residual attention")
        if self.config.kernel == "explicit":
            reasons.append("kernel='explicit'")
        return tuple(reasons)

    def _heads(self, t: Tensor, heads: int) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, heads, -1).transpose(1, 2)

    def _project(
        self,
        x: Tensor,
        context: Tensor | None,
        positions: Tensor | RotaryAngles | CrossRotary | None,
        cache: LayerKVCache | None,
        values: Any = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q (b, h, n, d), k (b, kvh, j, d), v (b, kvh, j, d_v): normalised, rotated, cached;
        ``values``: a ValueCarry, the new values mixed with the first layer's (value residual)."""
        qkv = self.qkv
        if cache is not None and cache.is_cross and cache.k is not None and cache.v is not None:
            q = self._heads(qkv.queries(x), self.heads)  # the context's keys/values are cached
            if self.qk_norm is not None:
                q = self.qk_norm.queries(q)
            if self.qk_rmsnorm is not None:
                q = self.qk_rmsnorm.queries(q)
            if isinstance(positions, CrossRotary):
                q = positions.rotate_queries(q)
            return q, cache.k, cache.v
        if self.latent_cache and context is None and isinstance(qkv, LatentQKV):
            return qkv.project(self, x, positions, cache)
        if context is None and self.rotates_together(positions) and isinstance(qkv, FusedQKV):
            return self.split_rotated(qkv.to_qkv(x), positions, cache, values, x)
        q, k, v = qkv(x, context)
        q = self._heads(q, self.heads)
        k, v = self._heads(k, self.kv_heads), self._heads(v, self.kv_heads)
        if values is not None:
            v = values.mix(v, x, self.value_residual, context is not None)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        if self.qk_rmsnorm is not None:
            q, k = self.qk_rmsnorm(q, k)
        if isinstance(positions, CrossRotary):  # cross-attention with context_pos
            if context is not None:
                q, k = positions.rotate_queries(q), positions.rotate_keys(k)
        elif self.position is not None and context is None:
            if positions is None:
                raise _missing_positions()
            q, k = self.position(q, k, positions)
            if self.rotate_values:
                v = self.position.rotate_values(v, positions)
        if cache is not None:
            if cache.is_cross:
                cache.set_context(k, v)
            else:
                k, v = self.cache_update(cache, k, v)
        return q, k, v

    def cache_update(self, cache: LayerKVCache, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new keys/values; the keys/values the queries see (a sliding-window layer
        keeps only its last W in a ring buffer)."""
        if self.sliding_window is None:
            return cache.update(k, v)
        return cache.update_window(k, v, self.sliding_window)

    def rotates_together(self, positions: Any) -> bool:
        """Whether self-attention rotates its query and key heads in one pass (rotary without
        qk-norm, with the same factors for queries and keys)."""
        return self.rotate_qk_together and getattr(positions, "shared", True)

    def split_rotated(
        self,
        qkv: Tensor,
        positions: Any,
        cache: LayerKVCache | None,
        values: Any = None,
        x: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The fused projection's output (b, n, q + k + v) -> rotated q, k and v heads, the keys
        and values cached: the query and key heads are rotated together, in the (b, n, heads,
        d) layout of the projection (``rotates_together``)."""
        b, n, _ = qkv.shape
        sizes, heads, kv_heads = cast(FusedQKV, self.qkv).sizes, self.heads, self.kv_heads
        qk_dim = sizes[0] + sizes[1]
        qk = qkv.narrow(-1, 0, qk_dim).view(b, n, heads + kv_heads, self.dim_head)
        position = self.position
        if position is None:
            raise ValueError("Attention.split_rotated: this layer has no rotary position module")
        if positions is None:
            raise _missing_positions()
        q, k = position.rotate_rows(qk, positions).split((heads, kv_heads), dim=2)
        # shared_kv: the values are the keys before rotation
        v_start = qk_dim if len(sizes) == 3 else sizes[0]
        v = qkv.narrow(-1, v_start, sizes[-1]).view(b, n, kv_heads, -1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if values is not None and x is not None:
            v = values.mix(v, x, self.value_residual, False)
        if cache is not None:
            k, v = self.cache_update(cache, k, v)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        *,
        plan: AttentionMask | None = None,
        positions: Tensor | RotaryAngles | CrossRotary | None = None,
        cache: LayerKVCache | None = None,
        return_intermediates: bool = False,
        return_attn: bool = False,
        prev_attn: Tensor | None = None,
        values: Any = None,
        additional_kv: tuple[Tensor, Tensor] | None = None,
        additional_kv_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Intermediates]:
        """x (b, n, dim) [context (b, m, dim_context)] -> (b, n, dim).

        ``mask``/``context_mask``/``attn_mask`` are used when called on its own; a stack passes the
        combined ``plan`` it built once for all layers. ``positions`` (b|1, n) are the positions
        of the rows of x (the stack computes them once per forward). ``return_attn``: the
        attention maps in the intermediates (the explicit path runs for this call);
        ``prev_attn``: the previous layer's pre-softmax logits (residual attention);
        ``values``: a stack's ValueCarry (add_value_residual). ``additional_kv``: external
        (keys, values) (b, kv_heads, m, d) this layer also attends to, with ``additional_kv_mask``
        (b, m) (x-transformers 2.x ``self_attn_additional_kv``; ``nn/additional_kv.py``).
        """
        is_self = context is None and (cache is None or not cache.is_cross)
        q, k, v = self._project(x, context, positions, cache, values)
        q_len, k_len = q.shape[-2], k.shape[-2]
        if plan is None:
            plan = build_attention_mask(
                q_len=q_len,
                k_len=k_len,
                causal=self.causal and is_self,
                key_mask=mask if context is None else context_mask,
                attn_mask=attn_mask,
                device=x.device,
            )
        if self.window is not None and is_self:
            window = self.window if self.sliding_window is None else self.sliding_window
            plan = self.restrict(plan, window, q_len, k_len, x.device)
        if self.data_alibi is not None and is_self:
            plan = plan.with_bias(self.data_alibi(x, cache))
        cached_kv = (k, v)
        if self.prepended is not None:
            memory_keys = None if self.qk_norm is None else self.qk_norm.memory_keys
            k, v, plan = self.prepended(k, v, plan, q_len, memory_keys)
        if additional_kv is not None:
            k, v, plan = prepend_additional_kv(k, v, plan, q_len, additional_kv, additional_kv_mask)
        if self.sink is not None:
            k, v, plan = self.sink(k, v, plan, q_len)
        if self.differential is None:
            out, inter = self.attend(q, k, v, plan, return_attn=return_attn, prev_attn=prev_attn)
        else:
            out, inter = self.differential(self.attend, q, k, v, plan, return_attn)
        for op in self.head_ops.values():
            out = op(out, x)
        out = out.transpose(1, 2).flatten(2)
        if self.to_v_gate is not None:
            out = self.to_v_gate(out, x)
        if self.to_output_gate is not None:
            out = self.to_output_gate(out)
        out = self.to_out(out)
        if return_intermediates:
            inter = inter if inter is not None else Intermediates()
            inter.cached_kv = cached_kv
            return out, inter
        return out
