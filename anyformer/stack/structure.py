"""What fills a block's slots, from the stack's structure options: norms (pre-LN, post-LN,
sandwich, ResiDual), the residual (sum, scaled, GRU-gated), token shift, Macaron's half step,
and the branch configs zero_init_branch_output rewrites."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..config.attention import AttentionConfig
from ..config.feedforward import FeedForwardConfig
from ..config.stack import StackConfig
from ..config.structure import per_layer
from ..nn.layer_scale import AdaptiveLayerScale, LayerScale
from ..nn.norms import build_norm
from ..nn.residual import GRUGating, Residual
from ..nn.scale import Scale
from ..nn.token_shift import ShiftTokens, shift_amounts
from .hyper import HyperConnection

__all__ = ["attention_config", "block_slots", "feedforward_branch", "feedforward_config"]


def block_slots(
    config: StackConfig, layer_type: str, index: int, norm: nn.Module | None = None
) -> dict[str, Any]:
    """Keyword arguments of Block for layer `index` (of type `layer_type`). ``norm``: a given
    module for the block's norm slot (pre-norm, or post-norm with post-LN) instead of the
    flag-built one."""
    c = config
    shift = per_layer(c.shift_tokens, len(c.layer_types))[index]
    residual: nn.Module
    if c.num_residual_streams > 1:
        residual = HyperConnection(
            c.dim, index, c.num_residual_streams, c.hyper_conn_sinkhorn_iters
        )
    elif c.gate_residual:
        residual = GRUGating(c.dim, scale_residual=c.scale_residual)
    else:
        residual = Residual(c.dim, c.scale_residual, c.scale_residual_constant)
    main = norm if norm is not None else build_norm(c.dim, c.norm)
    return dict(
        pre_norm=main if c.block_pre_norm else None,
        post_norm=None if c.block_pre_norm else main,
        post_branch_norm=build_norm(c.dim, c.norm) if c.sandwich_norm else None,
        residual=residual,
        token_shift=(
            ShiftTokens(shift_amounts(shift, c.causal), use_mask=layer_type != "f")
            if shift > 0
            else None
        ),
        dual_scale=c.resi_dual_scale if c.resi_dual else None,
        branch_scale=_branch_scale(c),
        conditioned=c.norm.conditioned,
    )


def _branch_scale(c: StackConfig) -> nn.Module | None:
    """LayerScale / the adaLN-Zero gate on the branch output, if asked."""
    if c.use_layerscale:
        return LayerScale(c.dim, c.layerscale_init_value)
    if c.use_adaptive_layerscale:
        return AdaptiveLayerScale(c.dim, c.norm.dim_condition)
    return None


def attention_config(config: StackConfig, is_cross: bool) -> AttentionConfig:
    """The attention options of a self- or cross-attention layer."""
    attn = config.cross_attention if is_cross else config.attention
    if config.zero_init_branch_output:
        attn = dataclasses.replace(attn, zero_init_output=True)
    return attn


def feedforward_config(config: StackConfig) -> FeedForwardConfig:
    ff = config.feedforward
    if config.zero_init_branch_output:
        ff = dataclasses.replace(ff, zero_init_output=True)
    return ff


def feedforward_branch(config: StackConfig, ff: nn.Module) -> nn.Module:
    """Macaron's feedforwards take half steps."""
    return Scale(0.5, ff) if config.macaron else ff
