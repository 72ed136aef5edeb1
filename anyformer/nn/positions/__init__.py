"""Positional schemes, one module per file, chosen once at construction from a PositionConfig.

- absolute.py: learned absolute and scaled sinusoidal embeddings (added by the wrapper);
- rotary.py: rotary embedding and its family (partial, xPos, interpolation, NTK base), applied
  by every self-attention layer to its new queries and keys; rotary_scaling.py: its context
  extensions (Llama 3, YaRN, dynamic NTK, LongRoPE);
- alibi.py, t5_bias.py, dynamic_bias.py: additive attention biases, computed once per forward
  by the stack from query and key positions and merged into the attention mask.
- left_padding.py: ``seq_start_pos`` (left-padded rows) as per-row positions and a key mask;
- tables.py: computed position tables stay float32 under any module dtype, and are normal
  tensors even when grown under inference mode.
"""

from __future__ import annotations

from torch import nn

from ...config.positions import PositionConfig
from ...config.stack import StackConfig
from .absolute import AbsolutePositionalEmbedding, ScaledSinusoidalEmbedding
from .alibi import AlibiPositionalBias, alibi_slopes
from .dynamic_bias import DynamicPositionBias
from .left_padding import left_padded
from .rotary import RotaryAngles, RotaryEmbedding, apply_rotary
from .rotary_scaling import RotaryScaling
from .t5_bias import RelativePositionBias, rel_pos_bias_scale, t5_bucket

__all__ = [
    "AbsolutePositionalEmbedding",
    "AlibiPositionalBias",
    "DynamicPositionBias",
    "RelativePositionBias",
    "RotaryAngles",
    "RotaryEmbedding",
    "ScaledSinusoidalEmbedding",
    "alibi_slopes",
    "apply_rotary",
    "build_attn_bias",
    "build_rotary",
    "left_padded",
    "t5_bucket",
]


def build_rotary(config: StackConfig) -> RotaryEmbedding | None:
    """The stack's rotary module (shared by its self-attention layers), or None."""
    p = config.positions
    if not p.uses_rotary:
        return None
    return RotaryEmbedding(
        p.rotary_dim(config.attention.dim_head),
        head_dim=config.attention.dim_head,
        theta=p.rotary_theta,
        interpolation_factor=p.rotary_interpolation_factor,
        base_rescale_factor=p.rotary_base_rescale_factor,
        xpos_scale_base=p.rotary_xpos_scale_base if p.rotary_xpos else None,
        scaling=_rotary_scaling(p),
    )


def _rotary_scaling(p: PositionConfig) -> RotaryScaling | None:
    """The stack's rotary_scaling keywords as one record (None when off)."""
    if p.rotary_scaling is None or p.rotary_original_max_seq_len is None:
        return None
    return RotaryScaling(
        kind=p.rotary_scaling,
        original_max_seq_len=p.rotary_original_max_seq_len,
        factor=p.rotary_scaling_factor,
        low_freq_factor=p.rotary_low_freq_factor,
        high_freq_factor=p.rotary_high_freq_factor,
        beta_fast=p.rotary_yarn_beta_fast,
        beta_slow=p.rotary_yarn_beta_slow,
        truncate=p.rotary_yarn_truncate,
        attn_factor=p.rotary_attn_factor,
        short_factor=p.rotary_short_factor,
        long_factor=p.rotary_long_factor,
    )


def build_attn_bias(config: StackConfig) -> nn.Module | None:
    """The stack's additive position bias (ALiBi, T5 buckets or dynamic MLP), or None."""
    p = config.positions
    if p.alibi_pos_bias:
        heads = config.heads if p.alibi_num_heads is None else p.alibi_num_heads
        kv_heads = config.attention.kv_heads_for(config.heads)
        return AlibiPositionalBias(heads, config.heads, kv_heads)
    if p.rel_pos_bias:
        return RelativePositionBias(
            config.heads,
            causal=config.causal,
            num_buckets=p.rel_pos_num_buckets,
            max_distance=p.rel_pos_max_distance,
            scale=rel_pos_bias_scale(config.attention.dim_head, config.attention.scale),
        )
    if p.dynamic_pos_bias:
        return DynamicPositionBias(
            config.dim // 4,
            heads=config.heads,
            depth=p.dynamic_pos_bias_mlp_depth,
            log_distance=p.dynamic_pos_bias_log_distance,
            norm=p.dynamic_pos_bias_norm,
        )
    return None
