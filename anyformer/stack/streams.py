"""Residual-stream options that act across blocks, built once per stack (None when all are off,
so a plain stack runs its blocks exactly as before):

- ``reinject_input``: a linear map of the stack's input (optionally gated per token by
  ``sigmoid(linear(input))``) is added to every branch input before its norm
  (https://arxiv.org/abs/1909.01377); the residual stream itself is not changed.
- ``unet_skips`` (x-transformers 2.x semantics): with ``k = depth // len(block)`` skips, the
  inputs of the first ``k`` blocks are kept; each block of the latter half (block index >=
  depth / 2) starts with ``combine([kept input, x])`` (a bias-free Linear(2 dim, dim)), the
  last kept input going to the first such block (nested, as a U-Net).
- ``add_value_residual``: a ValueCarry per forward (``anyformer.nn.value_residual``).
- conditioned norms / layerscale: forward's ``condition`` is checked and handed to every block.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from ..config.stack import StackConfig
from ..config.structure import default_block
from ..nn.value_residual import ValueCarry
from .blocks import StackRun

__all__ = ["SkipCombine", "Streams", "build_streams"]


class SkipCombine(nn.Module):
    """x <- combine([hiddens[index], x]): a U-Net skip from an earlier block's input."""

    def __init__(self, dim: int, index: int) -> None:
        super().__init__()
        self.index = index
        self.combine = nn.Linear(dim * 2, dim, bias=False)

    def forward(self, x: Tensor, hiddens: list[Tensor]) -> Tensor:
        return self.combine(torch.cat((hiddens[self.index], x), dim=-1))


def _skip_combines(c: StackConfig) -> nn.ModuleList | None:
    """One SkipCombine (or None) per layer, x-transformers 2.x's pairing."""
    if not c.unet_skips:
        return None
    block = len(default_block(c))
    kept = [i * block for i in range(_num_skips(c))]
    combines: list[nn.Module | None] = []
    for index in range(len(c.layer_types)):
        latter = index % block == 0 and index // block >= c.depth / 2
        combines.append(SkipCombine(c.dim, kept.pop()) if latter else None)
    return nn.ModuleList(cast(list[nn.Module], combines))  # None: no skip into that layer


def _num_skips(c: StackConfig) -> int:
    """x-transformers 2.x keeps depth // len(block) block inputs (depth counts blocks)."""
    return c.depth // len(default_block(c))


class Streams(nn.Module):
    """The cross-block options of one stack (see the module docstring)."""

    def __init__(self, c: StackConfig) -> None:
        super().__init__()
        self.needs_condition = c.norm.conditioned or c.use_adaptive_layerscale
        self.dim_condition = c.norm.dim_condition or c.dim
        self.value_residual = c.add_value_residual
        self.reinject_input_proj = nn.Linear(c.dim, c.dim, bias=False) if c.reinject_input else None
        self.learned_reinject_input_gate = (
            nn.Linear(c.dim, 1, bias=False) if c.learned_reinject_input_gate else None
        )
        self.skip_combines = _skip_combines(c)
        self.num_streams = c.num_residual_streams
        self.stream_emb = (
            nn.Parameter(torch.zeros(c.num_residual_streams, c.dim))
            if c.num_residual_streams > 1
            else None
        )

    def reset_parameters(self) -> None:
        if self.stream_emb is not None:
            nn.init.zeros_(self.stream_emb)

    def refuse_mems(self, mems: Any) -> None:
        """Transformer-XL memories are written through the blocks' plain pre-norms, one hidden
        per stream batch: not with adaptive norms or several residual streams."""
        if mems is not None and (self.needs_condition or self.stream_emb is not None):
            raise ValueError(
                "mems: Transformer-XL memories cannot be combined with adaptive norms / "
                "layerscale or num_residual_streams > 1"
            )

    def prepare(self, x: Tensor, run: StackRun, condition: Tensor | None) -> None:
        """Fill this forward's run: the condition, the reinjected input, the value carry."""
        run.condition = self._check_condition(condition, x)
        if self.value_residual:
            run.values = ValueCarry()
        if self.reinject_input_proj is not None:
            inject = self.reinject_input_proj(x)
            if self.learned_reinject_input_gate is not None:
                inject = inject * torch.sigmoid(self.learned_reinject_input_gate(x))
            run.inject = inject

    def _check_condition(self, condition: Tensor | None, x: Tensor) -> Tensor | None:
        if not self.needs_condition:
            if condition is not None:
                raise ValueError(
                    "condition was given but this stack has no adaptive norm or layerscale "
                    "(use_adaptive_layernorm / use_adaptive_rmsnorm / use_adaptive_layerscale)"
                )
            return None
        if condition is None:
            raise ValueError(
                "condition is required: this stack's norms or layerscale are adaptive (pass "
                f"condition=(batch, {self.dim_condition}) or (batch, seq_len, "
                f"{self.dim_condition}))"
            )
        return check_condition(condition, x, self.dim_condition)

    def run(self, stack: Any, x: Tensor, run: StackRun) -> Tensor:
        """The blocks in execution order, U-Net skips joining where built; with
        hyper-connections over the streams (b * s, n, d), summed at the end."""
        if self.stream_emb is None:
            return self._blocks(stack, x, run)
        b, n, d = x.shape
        s = self.num_streams
        streams = (x.unsqueeze(1) + self.stream_emb.unsqueeze(1)).reshape(b * s, n, d)
        return self._blocks(stack, streams, run).view(b, s, n, d).sum(dim=1)

    def _blocks(self, stack: Any, x: Tensor, run: StackRun) -> Tensor:
        if self.skip_combines is None:
            return stack._run_blocks(x, run)
        layers, combines = list(stack.layers), self.skip_combines
        plan = stack.execution_plan
        skip = stack._dropped_layers(run.cache, plan) if stack.training else None
        hiddens: list[Tensor] = []
        for step, (index, slot) in enumerate(plan):
            hiddens.append(x)
            combine = combines[index] if index < len(combines) else None
            if combine is not None:
                x = combine(x, hiddens)
            if skip is not None and skip[step]:
                if run.collect and layers[index].layer_type == "a":
                    run.hiddens.append(x)
                continue
            x = layers[index](x, run, slot)
        return x


def check_condition(condition: Any, x: Tensor, dim_condition: int) -> Tensor:
    """condition: a float tensor (b, dim_condition) or (b, n, dim_condition), n the rows of x."""
    b, n = x.shape[:2]
    ok = isinstance(condition, Tensor) and condition.is_floating_point()
    if ok and condition.ndim == 2:
        ok = tuple(condition.shape) == (b, dim_condition)
    elif ok:
        ok = condition.ndim == 3 and tuple(condition.shape) == (b, n, dim_condition)
    if not ok:
        shape = tuple(condition.shape) if isinstance(condition, Tensor) else type(condition)
        raise ValueError(
            f"condition must be a float tensor of shape (batch={b}, {dim_condition}) or "
            f"(batch={b}, seq_len={n}, {dim_condition}), got {shape}"
        )
    return condition.to(x.dtype)


def build_streams(c: StackConfig) -> Streams | None:
    """The stack's Streams, or None when no cross-block option is on."""
    on = (
        c.reinject_input,
        c.unet_skips,
        c.add_value_residual,
        c.norm.conditioned,
        c.use_adaptive_layerscale,
        c.num_residual_streams > 1,
    )
    return Streams(c) if any(on) else None
