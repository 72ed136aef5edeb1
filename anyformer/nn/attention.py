"""Attention: projections (fused q/k/v where shapes allow), heads, cache, then the kernel."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..cache import LayerKVCache
from ..config.attention import AttentionConfig
from ..config.later import LATER_ATTENTION
from ..config.options import build_options
from .attend import Attend, Intermediates
from .masks import AttentionMask, build_attention_mask

__all__ = ["Attention", "FusedQKV", "SplitQKV"]


class FusedQKV(nn.Module):
    """One (dim -> 3 * inner) projection; with a separate context it slices the weight."""

    def __init__(self, dim: int, inner: int, bias: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=bias)

    def _slice(self, part: slice) -> tuple[Tensor, Tensor | None]:
        bias = self.to_qkv.bias
        return self.to_qkv.weight[part], None if bias is None else bias[part]

    def forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if context is None:
            return self.to_qkv(x).split(self.inner, dim=-1)
        q = nn.functional.linear(x, *self._slice(slice(None, self.inner)))
        kv = nn.functional.linear(context, *self._slice(slice(self.inner, None)))
        k, v = kv.split(self.inner, dim=-1)
        return q, k, v

    def queries(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, *self._slice(slice(None, self.inner)))


class SplitQKV(nn.Module):
    """Queries from x, keys/values from a context of another width (dim_context)."""

    def __init__(self, dim: int, dim_context: int, inner: int, bias: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_kv = nn.Linear(dim_context, 2 * inner, bias=bias)

    def forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if context is None:
            raise ValueError(
                f"Attention: built with dim_context={self.to_kv.in_features}, so a `context` of "
                "that width is required"
            )
        k, v = self.to_kv(context).split(self.inner, dim=-1)
        return self.to_q(x), k, v

    def queries(self, x: Tensor) -> Tensor:
        return self.to_q(x)


def _parse_config(config: AttentionConfig | None, kwargs: dict[str, Any]) -> AttentionConfig:
    if config is not None:
        if kwargs:
            raise TypeError("Attention: pass either config= or keyword options, not both")
        return config
    valid = [*AttentionConfig.__dataclass_fields__, *LATER_ATTENTION, "heads", "causal"]
    return build_options(AttentionConfig, "Attention", kwargs, later=LATER_ATTENTION, valid=valid)


class Attention(nn.Module):
    """Multi-head self- or cross-attention (x-transformers' ``Attention``)."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        causal: bool = False,
        *,
        config: AttentionConfig | None = None,
        position: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """``position`` (set by a stack): a module ``(q, k, positions) -> (q, k)`` that encodes
        the tokens' positions into queries and keys (rotary); None for none."""
        super().__init__()
        config = _parse_config(config, kwargs)
        self.config = config
        self.heads = heads
        self.causal = causal
        self.dim_head = config.dim_head
        inner = heads * config.dim_head
        dim_context = config.dim_context or dim
        bias = config.qkv_bias
        self.qkv = (
            FusedQKV(dim, inner, bias)
            if dim_context == dim
            else SplitQKV(dim, dim_context, inner, bias)
        )
        self.attend = Attend(
            flash=config.flash, dropout=config.dropout, scale=config.dim_head**-0.5
        )
        self.to_out = nn.Linear(inner, dim, bias=config.out_bias)
        self.position = position
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise what this module owns beyond its children's defaults."""
        for linear in (*self.qkv.children(), self.to_out):
            if isinstance(linear, nn.Linear) and linear.bias is not None:
                nn.init.zeros_(linear.bias)  # projection biases start at zero (GPT-2, BERT)
        if self.config.zero_init_output:
            nn.init.zeros_(self.to_out.weight)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        *,
        plan: AttentionMask | None = None,
        positions: Tensor | None = None,
        cache: LayerKVCache | None = None,
        return_intermediates: bool = False,
        return_attn: bool = False,
    ) -> Tensor | tuple[Tensor, Intermediates]:
        """x (b, n, dim) [context (b, m, dim_context)] -> (b, n, dim).

        ``mask``/``context_mask``/``attn_mask`` are used when called on its own; a stack passes the
        combined ``plan`` it built once for all layers. ``positions`` (b|1, n) are the positions
        of the rows of x (the stack computes them once per forward).
        """
        if cache is not None and cache.is_cross and cache.filled:
            q, k, v = self._heads(self.qkv.queries(x)), cache.k, cache.v
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x, context))
            if self.position is not None and context is None:
                q, k = self.position(q, k, positions)
            if cache is not None:
                if cache.is_cross:
                    cache.set_context(k, v)
                else:
                    k, v = cache.update(k, v)
        if plan is None:
            key_mask = mask if context is None else context_mask
            plan = build_attention_mask(
                q_len=q.shape[-2],
                k_len=k.shape[-2],
                causal=self.causal and context is None,
                key_mask=key_mask,
                attn_mask=attn_mask,
                device=x.device,
            )
        out, inter = self.attend(q, k, v, plan, return_attn=return_attn or return_intermediates)
        out = self.to_out(out.transpose(1, 2).flatten(2))
        if return_intermediates:
            inter = inter if inter is not None else Intermediates()
            inter.cached_kv = (k, v)
            return out, inter
        return out
