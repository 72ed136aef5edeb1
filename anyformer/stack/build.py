"""Building a stack's modules: each layer's block from the StackConfig, with the modules the
composition keywords give (``composition.py``) in place of flag-built ones."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..config.attention import AttentionConfig
from ..config.stack import StackConfig
from ..nn.attention import Attention
from ..nn.feedforward import FeedForward
from ..nn.moe import MixtureOfExperts
from ..nn.norms import build_norm
from ..nn.positions.rotary import LocalRotaryEmbedding, RotaryEmbedding
from ..nn.value_residual import ValueResidualMix
from .blocks import AttentionBlock, FeedForwardBlock, GivenAttentionBlock
from .composition import GivenModules
from .experts import ExpertsBlock
from .structure import attention_config, block_slots, feedforward_branch, feedforward_config

__all__ = ["StackModules", "build_modules"]

StackModules = tuple[list[nn.Module], nn.Module, tuple[str, ...]]
"""The blocks, the final norm, and the names of the modules that were given."""


def build_modules(
    config: StackConfig,
    rotary: RotaryEmbedding | None,
    given: GivenModules,
    owner: str,
) -> StackModules:
    """Every block of ``config.layer_types`` and the final norm; factories are called once per
    layer of their kind, in layer order."""
    types = config.layer_types
    given.check(owner, types, config.has_final_norm)
    blocks, names = [], []
    local = _local_rotary(config, rotary, owner)
    for index, layer_type in enumerate(types):
        branch = given.module(layer_type, index, owner)
        norm = given.module("n", index, owner)
        names += [f"layers.{index}.branch"] if branch is not None else []
        slot = "pre_norm" if config.block_pre_norm else "post_norm"
        names += [f"layers.{index}.{slot}"] if norm is not None else []
        own = rotary
        if local is not None and layer_type == "a":
            window = config.attention.window_of_layer(types[:index].count("a"))
            own = rotary if window is None else local
        blocks.append(_block(config, layer_type, index, own, branch, norm, owner))
    final_norm: nn.Module = nn.Identity()
    if config.has_final_norm:
        given_final = given.module("n", len(types), owner)
        names += ["final_norm"] if given_final is not None else []
        final_norm = given_final if given_final is not None else build_norm(config.dim, config.norm)
    return blocks, final_norm, tuple(names)


def _local_rotary(
    c: StackConfig, rotary: RotaryEmbedding | None, owner: str
) -> RotaryEmbedding | None:
    """rotary_local_theta: the rotary module of the sliding-window layers (shared by them)."""
    theta = c.positions.rotary_local_theta
    if theta is None or rotary is None:
        return None
    if c.attention.sliding_window is None:
        raise ValueError(
            f"{owner}: rotary_local_theta={theta} is the base of the sliding-window layers, but "
            "attn_sliding_window is not set (no layer has a window)"
        )
    return LocalRotaryEmbedding(rotary.dim, head_dim=rotary.head_dim, theta=float(theta))


def _with_window(
    c: StackConfig, attn: AttentionConfig, is_cross: bool, index: int, owner: str
) -> AttentionConfig:
    """Layer `index`'s own sliding window (attn_sliding_window: an int, or a tuple repeated
    over the self-attention layers); cross-attention has none (it inherits attn_* options)."""
    if attn.sliding_window is None:
        return attn
    if is_cross:
        return dataclasses.replace(attn, sliding_window=None)
    window = attn.sliding_window
    count = c.layer_types.count("a")
    if isinstance(window, tuple) and len(window) > count:
        raise ValueError(
            f"{owner}: attn_sliding_window gives {len(window)} per-layer windows, but the stack "
            f"has {count} self-attention layers"
        )
    own = attn.window_of_layer(c.layer_types[:index].count("a"))
    return attn if own == window else dataclasses.replace(attn, sliding_window=own)


def _value_mix(c: StackConfig, is_cross: bool, index: int) -> nn.Module | None:
    """add_value_residual: the learned mix of a self-attention layer after the first (the
    others mix with 0.5 and need no module)."""
    learned = c.add_value_residual and c.learned_value_residual_mix and not is_cross
    if not learned or "a" not in c.layer_types[:index]:
        return None
    return ValueResidualMix(c.dim, c.heads, learned=True)


def _block(
    c: StackConfig,
    layer_type: str,
    index: int,
    rotary: RotaryEmbedding | None,
    branch: nn.Module | None,
    norm: nn.Module | None,
    owner: str,
) -> nn.Module:
    """Layer `index`'s block: the given branch / norm where there is one, else flag-built."""
    slots = block_slots(c, layer_type, index, norm)  # norms, residual, token shift
    if layer_type == "f" and branch is None and c.feedforward.num_experts > 1:
        moe = MixtureOfExperts(c.dim, feedforward_config(c))
        return ExpertsBlock(feedforward_branch(c, moe), **slots)
    if layer_type == "f":
        ff = branch if branch is not None else FeedForward(c.dim, config=feedforward_config(c))
        return FeedForwardBlock(feedforward_branch(c, ff), **slots)
    is_cross = layer_type == "c"
    carries = c.cross_residual_attn if is_cross else c.residual_attn
    if branch is not None:
        if carries:
            option = "cross_residual_attn" if is_cross else "residual_attn"
            keyword = "cross_attn_factory" if is_cross else "attn_factory"
            raise ValueError(
                f"{owner}: {keyword} gives layer {index} its attention, but {option}=True "
                "hands pre-softmax logits between attention layers, which a given module "
                f"does not take: drop {option} or that layer's given module"
            )
        return GivenAttentionBlock(branch, is_cross=is_cross, **slots)
    attn = Attention(
        c.dim,
        heads=c.heads,
        causal=c.causal and not is_cross,
        config=_with_window(c, attention_config(c, is_cross), is_cross, index, owner),
        position=None if is_cross else rotary,
        carries_scores=carries,
        value_residual=_value_mix(c, is_cross, index),
        layer=c.layer_types[: index + 1].count(layer_type),  # 1-based depth among its kind
    )
    return AttentionBlock(attn, is_cross=is_cross, carries_scores=carries, **slots)
