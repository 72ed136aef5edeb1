"""Blocks: norm placement and residual around one branch (attention or feedforward)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..cache import KVCache
from ..nn.attend import Intermediates
from ..nn.masks import AttentionMask

__all__ = ["AttentionBlock", "Block", "FeedForwardBlock", "StackRun"]


@dataclass
class StackRun:
    """Per-forward state shared by all blocks (built once by the stack's forward)."""

    self_mask: AttentionMask
    cross_mask: AttentionMask | None = None
    context: Tensor | None = None
    cache: KVCache | None = None
    collect: bool = False
    return_attn: bool = False
    hiddens: list[Tensor] = field(default_factory=list)
    layer_hiddens: list[Tensor] = field(default_factory=list)
    attn_intermediates: list[Intermediates] = field(default_factory=list)


class Block(nn.Module):
    """x -> post_norm(x + branch(pre_norm(x))): pre-LN uses only pre_norm, post-LN only post_norm."""

    layer_type = "?"

    def __init__(self, branch: nn.Module, pre_norm: nn.Module, post_norm: nn.Module) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.branch = branch
        self.post_norm = post_norm

    def residual(self, x: Tensor, out: Tensor) -> Tensor:
        return self.post_norm(x + out)


class FeedForwardBlock(Block):
    layer_type = "f"

    def forward(self, x: Tensor, run: StackRun) -> Tensor:
        if run.collect:
            run.layer_hiddens.append(x)
        return self.residual(x, self.branch(self.pre_norm(x)))


class AttentionBlock(Block):
    """Self-attention ('a') or cross-attention ('c'); `cache_index` is its slot in a KVCache."""

    def __init__(
        self,
        branch: nn.Module,
        pre_norm: nn.Module,
        post_norm: nn.Module,
        *,
        is_cross: bool,
        cache_index: int,
    ) -> None:
        super().__init__(branch, pre_norm, post_norm)
        self.is_cross = is_cross
        self.cache_index = cache_index
        self.layer_type = "c" if is_cross else "a"

    def forward(self, x: Tensor, run: StackRun) -> Tensor:
        if run.collect:
            run.layer_hiddens.append(x)
            if not self.is_cross:
                run.hiddens.append(x)
        cache = None if run.cache is None else run.cache.layer(self.cache_index, self.is_cross)
        out = self.branch(
            self.pre_norm(x),
            context=run.context if self.is_cross else None,
            plan=run.cross_mask if self.is_cross else run.self_mask,
            cache=cache,
            return_intermediates=run.collect,
            return_attn=run.return_attn,
        )
        if run.collect:
            out, inter = out
            inter.layer_type = self.layer_type
            run.attn_intermediates.append(inter)
        return self.residual(x, out)
