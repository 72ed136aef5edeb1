"""Blocks: the slots around one branch (attention or feedforward), filled at construction.

A block computes ``post_norm(residual(x, post_branch_norm(branch(pre_norm(x)))))``. Pre-LN fills
``pre_norm``, post-LN fills ``post_norm``, sandwich norm fills ``post_branch_norm``; the residual
slot holds the plain sum or a variant (gating, scaling). Empty slots are ``nn.Identity``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..cache import KVCache
from ..nn.attend import Intermediates
from ..nn.masks import AttentionMask
from ..nn.residual import Residual

__all__ = ["AttentionBlock", "Block", "FeedForwardBlock", "StackRun"]


@dataclass
class StackRun:
    """Per-forward state shared by all blocks (built once by the stack's forward)."""

    self_mask: AttentionMask
    cross_mask: AttentionMask | None = None
    context: Tensor | None = None
    positions: Tensor | None = None  # (b|1, n) positions of the rows being computed
    cache: KVCache | None = None
    collect: bool = False
    return_attn: bool = False
    hiddens: list[Tensor] = field(default_factory=list)
    layer_hiddens: list[Tensor] = field(default_factory=list)
    attn_intermediates: list[Intermediates] = field(default_factory=list)


class Block(nn.Module):
    """One branch with its norm and residual slots."""

    layer_type = "?"

    def __init__(
        self,
        branch: nn.Module,
        pre_norm: nn.Module | None = None,
        post_norm: nn.Module | None = None,
        *,
        post_branch_norm: nn.Module | None = None,
        residual: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm or nn.Identity()
        self.branch = branch
        self.post_branch_norm = post_branch_norm or nn.Identity()
        self.residual = residual or Residual()
        self.post_norm = post_norm or nn.Identity()

    def join(self, x: Tensor, out: Tensor) -> Tensor:
        """Add the branch output to the stream through the residual and output-norm slots."""
        return self.post_norm(self.residual(x, self.post_branch_norm(out)))


class FeedForwardBlock(Block):
    layer_type = "f"

    def forward(self, x: Tensor, run: StackRun, slot: int | None = None) -> Tensor:
        if run.collect:
            run.layer_hiddens.append(x)
        return self.join(x, self.branch(self.pre_norm(x)))


class AttentionBlock(Block):
    """Self-attention ('a') or cross-attention ('c'); the stack gives each execution its cache slot."""

    def __init__(self, branch: nn.Module, *args: nn.Module | None, is_cross: bool, **kw) -> None:
        super().__init__(branch, *args, **kw)
        self.is_cross = is_cross
        self.layer_type = "c" if is_cross else "a"

    def forward(self, x: Tensor, run: StackRun, slot: int | None = None) -> Tensor:
        if run.collect:
            run.layer_hiddens.append(x)
            if not self.is_cross:
                run.hiddens.append(x)
        cache = None if run.cache is None else run.cache.layer(slot, self.is_cross)
        out = self.branch(
            self.pre_norm(x),
            context=run.context if self.is_cross else None,
            plan=run.cross_mask if self.is_cross else run.self_mask,
            positions=None if self.is_cross else run.positions,
            cache=cache,
            return_intermediates=run.collect,
            return_attn=run.return_attn,
        )
        if run.collect:
            out, inter = out
            inter.layer_type = self.layer_type
            run.attn_intermediates.append(inter)
        return self.join(x, out)
