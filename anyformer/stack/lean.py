"""The lean layer loop: the stack's blocks run as plain tensor code in inference.

Most models are stacks of the plain pre-norm block: ``x + branch(norm(x))`` with self-attention
on the fused kernel and a feedforward. For such stacks the loop below runs the same computations
(the same module methods, the same kernels, so the same numbers) without the per-block module
machinery: no ``nn.Module.__call__`` per block, branch and projection, no per-call option
dispatch, and the stream kept as (b * n, dim) so that every projection is one 2-D matrix
product. In cached decoding that machinery costs about as much as the arithmetic of a small
model, once per layer and per token.

It is chosen at construction (``LeanLoop.build`` returns None when some block is not plain) and
used only where it cannot differ from the blocks: in eval mode, without intermediates, when no
forward hook is registered on the modules it skips, and outside ``torch.compile`` (which removes
this overhead itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cache import KVCache
from ..nn.attention import Attention
from ..nn.feedforward import FeedForward
from ..nn.masks import AttentionMask
from ..nn.positions.rotary import RotaryAngles
from .blocks import AttentionBlock, Block, FeedForwardBlock, StackRun

__all__ = ["LeanLoop"]

_GLOBAL_HOOKS = (
    nn.modules.module._global_forward_hooks,
    nn.modules.module._global_forward_pre_hooks,
)


@dataclass(frozen=True)
class _Step:
    """One execution of a block: its norm and branch, and its KV-cache slot (attention)."""

    norm: nn.Module
    branch: nn.Module
    slot: int | None
    is_attention: bool


def _plain_attention(block: nn.Module) -> bool:
    if not isinstance(block, AttentionBlock) or block.is_cross or block.carries_scores:
        return False
    attn = block.branch
    return (
        isinstance(attn, Attention)
        and attn.attend.fused
        and attn.prepended is None
        and attn.window is None
        and len(attn.head_ops) == 0
        and attn.to_v_gate is None
        and type(attn.to_out) is nn.Linear
    )


def _plain_feedforward(block: nn.Module) -> bool:
    return isinstance(block, FeedForwardBlock) and type(block.branch) is FeedForward


def _plain_block(block: nn.Module) -> bool:
    return (
        isinstance(block, Block)
        and block.plain_join
        and block.token_shift is None
        and (_plain_attention(block) or _plain_feedforward(block))
    )


class LeanLoop:
    """The blocks of a plain stack in execution order, run without their module wrappers."""

    def __init__(self, steps: list[_Step], skipped: list[nn.Module]) -> None:
        self.steps = steps
        self.skipped = skipped  # the modules whose __call__ (and hooks) this loop bypasses

    @staticmethod
    def build(layers: nn.ModuleList, plan: tuple[tuple[int, int | None], ...]) -> LeanLoop | None:
        """The loop for these blocks and this execution plan; None if some block is not plain."""
        if not all(_plain_block(block) for block in layers):
            return None
        steps, skipped = [], []
        for index, slot in plan:
            block = layers[index]
            attention = block.layer_type == "a"
            steps.append(_Step(block.pre_norm, block.branch, slot, attention))
        for block in layers:
            branch = block.branch
            skipped += [block, block.pre_norm, branch]
            if isinstance(branch, Attention):
                skipped += [branch.attend, branch.to_out, *branch.qkv.children()]
            else:
                skipped += [branch.proj_in, branch.proj_out]
        return LeanLoop(steps, skipped)

    def usable(self) -> bool:
        """No forward hook would be skipped, and no compiler is tracing."""
        if any(_GLOBAL_HOOKS) or torch.compiler.is_compiling():
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.skipped)

    def __call__(self, x: Tensor, run: StackRun) -> Tensor:
        b, n, d = x.shape
        x = x.reshape(b * n, d)
        cache, mask, positions = run.cache, run.self_mask, run.self_positions
        for step in self.steps:
            h = step.norm.forward(x)
            if step.is_attention:
                x = x + _attention(step, h.view(b, n, d), cache, mask, positions)
            else:
                x = x + _feedforward(step.branch, h)
        return x.view(b, n, d)


def _attention(
    step: _Step,
    h: Tensor,
    cache: KVCache | None,
    mask: AttentionMask,
    positions: Tensor | RotaryAngles | None,
) -> Tensor:
    """Attention.forward for a plain self-attention layer, on (b, n, dim) -> (b * n, dim)."""
    attn = step.branch
    layer_cache = None if cache is None else cache.layer(step.slot, False)
    b, n = h.shape[:2]
    if attn.rotates_together(positions):  # the projection as one 2-D product
        to_qkv = attn.qkv.to_qkv
        qkv = F.linear(h.view(b * n, -1), to_qkv.weight, to_qkv.bias).view(b, n, -1)
        q, k, v = attn.split_rotated(qkv, positions, layer_cache)
    else:
        q, k, v = attn._project(h, None, positions, layer_cache)
    out, _ = attn.attend.forward(q, k, v, mask)
    out = out.transpose(1, 2).reshape(b * n, -1)
    return F.linear(out, attn.to_out.weight, attn.to_out.bias)


def _feedforward(ff: FeedForward, h: Tensor) -> Tensor:
    """FeedForward.forward on (b * n, dim)."""
    h = ff.act(F.linear(h, ff.proj_in.weight, ff.proj_in.bias))
    for op in ff._hidden_ops:
        h = op(h)
    return F.linear(h, ff.proj_out.weight, ff.proj_out.bias)
