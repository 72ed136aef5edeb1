"""Building a stack's modules: each layer's block from the StackConfig, with the modules the
composition keywords give (``composition.py``) in place of flag-built ones."""

from __future__ import annotations

from torch import nn

from ..config.stack import StackConfig
from ..nn.attention import Attention
from ..nn.feedforward import FeedForward
from ..nn.norms import build_norm
from ..nn.positions.rotary import RotaryEmbedding
from .blocks import AttentionBlock, FeedForwardBlock, GivenAttentionBlock
from .composition import GivenModules
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
    for index, layer_type in enumerate(types):
        branch = given.module(layer_type, index, owner)
        norm = given.module("n", index, owner)
        names += [f"layers.{index}.branch"] if branch is not None else []
        slot = "pre_norm" if config.block_pre_norm else "post_norm"
        names += [f"layers.{index}.{slot}"] if norm is not None else []
        blocks.append(_block(config, layer_type, index, rotary, branch, norm, owner))
    final_norm: nn.Module = nn.Identity()
    if config.has_final_norm:
        given_final = given.module("n", len(types), owner)
        names += ["final_norm"] if given_final is not None else []
        final_norm = given_final if given_final is not None else build_norm(config.dim, config.norm)
    return blocks, final_norm, tuple(names)


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
        config=attention_config(c, is_cross),
        position=None if is_cross else rotary,
        carries_scores=carries,
    )
    return AttentionBlock(attn, is_cross=is_cross, carries_scores=carries, **slots)
