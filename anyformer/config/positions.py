"""PositionConfig: the positional scheme of a stack (rotary family, ALiBi, T5 and dynamic biases).

Stack-level keywords whose names are these fields land here. At most one additive bias (ALiBi,
T5 buckets, dynamic MLP) may be on; rotary may be combined with any of them. Checks that need the
stack's own options (causality, heads, head width) live in ``check_stack``, which StackConfig
calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import check_fields, current_prefix, option
from .rotary_scaling import (
    DYNAMIC_NTK,
    LLAMA3,
    LONGROPE,
    SCALING_DEFAULTS,
    YARN,
    check_scaling,
    check_scaling_stack,
)

__all__ = ["PositionConfig"]

_ROTARY_OPTIONS = {
    "rotary_emb_dim": None,
    "rotary_xpos_scale_base": 512.0,
    "rotary_interpolation_factor": 1.0,
    "rotary_base_rescale_factor": 1.0,
    "rotary_theta": 10000.0,
    "rotary_local_theta": None,
    **SCALING_DEFAULTS,
}
_ROTARY = "https://arxiv.org/abs/2104.09864"
_XPOS = "https://arxiv.org/abs/2212.10554"
_ALIBI = "https://arxiv.org/abs/2108.12409"
_T5 = "https://arxiv.org/abs/1910.10683"
_DYNAMIC = "https://arxiv.org/abs/2111.09883"


@dataclass(frozen=True)
class PositionConfig:
    """Positional options of a stack; each field is one x-transformers keyword (plus rotary_theta)."""

    rotary_pos_emb: bool = option(False, "rotary position embedding on queries and keys", _ROTARY)
    rotary_emb_dim: int | None = option(
        None,
        "rotated features per head (partial rotary); default max(dim_head // 2, 32), at most "
        "dim_head",
        "https://github.com/kingoflolz/mesh-transformer-jax",
    )
    rotary_xpos: bool = option(
        False, "xPos: rotary with an exponential decay by distance (causal only)", _XPOS
    )
    rotary_xpos_scale_base: float = option(
        512.0, "xPos: distance over which the decay applies", _XPOS
    )
    rotary_interpolation_factor: float = option(
        1.0, "position interpolation: positions are divided by this factor (>= 1)",
        "https://arxiv.org/abs/2306.15595",
    )  # fmt: skip
    rotary_base_rescale_factor: float = option(
        1.0,
        "NTK-aware scaling: the rotary base is multiplied by factor ** (d / (d - 2))",
        "https://www.reddit.com/r/LocalLLaMA/comments/14lz7j5/",
    )
    rotary_theta: float = option(
        10000.0, "rotary base (Llama 1/2: 10000, Llama 3: 500000)", _ROTARY
    )
    rotary_local_theta: float | None = option(
        None,
        "rotary base of the self-attention layers that have a sliding window "
        "(attn_sliding_window), plain rotary without scaling; the global layers keep "
        "rotary_theta and rotary_scaling (Gemma 3: 10000 local, 1000000 global); None: one "
        "base. anyformer's own keyword",
        "https://arxiv.org/abs/2503.19786",
    )
    rotary_scaling: str | None = option(
        None,
        "rotary context extension recomputing the frequencies: 'llama3' (band-wise division), "
        "'yarn' (per-dimension ramp + attention factor), 'dynamic' (NTK base from the current "
        "length), 'longrope' (per-dimension short/long factors); None: off",
        f"{LLAMA3} {YARN} {DYNAMIC_NTK} {LONGROPE}",
    )
    rotary_scaling_factor: float = option(
        1.0, "rotary_scaling: the context extension factor s (>= 1)", YARN
    )
    rotary_original_max_seq_len: int | None = option(
        None,
        "rotary_scaling: the context length the model was trained with (required by every "
        "rotary_scaling)",
        YARN,
    )
    rotary_low_freq_factor: float = option(
        1.0, "rotary_scaling='llama3': wavelengths above original / this are divided by s", LLAMA3
    )
    rotary_high_freq_factor: float = option(
        4.0, "rotary_scaling='llama3': wavelengths below original / this are kept", LLAMA3
    )
    rotary_yarn_beta_fast: float = option(
        32.0, "rotary_scaling='yarn': dimensions with more rotations are extrapolated", YARN
    )
    rotary_yarn_beta_slow: float = option(
        1.0, "rotary_scaling='yarn': dimensions with fewer rotations are interpolated", YARN
    )
    rotary_yarn_truncate: bool = option(
        True, "rotary_scaling='yarn': round the ramp's bounds to whole dimensions", YARN
    )
    rotary_attn_factor: float | None = option(
        None,
        "rotary_scaling: cos/sin are multiplied by this (yarn default 0.1 ln s + 1, longrope "
        "default sqrt(1 + ln s / ln original); else 1)",
        YARN,
    )
    rotary_short_factor: tuple[float, ...] | None = option(
        None,
        "rotary_scaling='longrope': per-frequency divisors while the length <= original",
        LONGROPE,
    )
    rotary_long_factor: tuple[float, ...] | None = option(
        None,
        "rotary_scaling='longrope': per-frequency divisors once the length > original",
        LONGROPE,
    )
    alibi_pos_bias: bool = option(
        False, "ALiBi: a linear distance penalty per head added to the attention logits", _ALIBI
    )
    alibi_num_heads: int | None = option(
        None, "ALiBi on the first alibi_num_heads heads only (default: all heads)", _ALIBI
    )
    rel_pos_bias: bool = option(
        False, "T5 relative position bias: one learned scalar per head and distance bucket", _T5
    )
    rel_pos_num_buckets: int = option(32, "T5 bias: number of distance buckets", _T5)
    rel_pos_max_distance: int = option(
        128, "T5 bias: distance from which all distances share the last bucket", _T5
    )
    dynamic_pos_bias: bool = option(
        False, "dynamic position bias: an MLP maps each distance to a bias per head", _DYNAMIC
    )
    dynamic_pos_bias_log_distance: bool = option(
        False, "dynamic bias: the MLP reads sign(d) * log(|d| + 1)", _DYNAMIC
    )
    dynamic_pos_bias_mlp_depth: int = option(
        2, "dynamic bias: hidden layers of the MLP (>= 1)", _DYNAMIC
    )
    dynamic_pos_bias_norm: bool = option(
        False, "dynamic bias: LayerNorm after each hidden layer of the MLP", _DYNAMIC
    )
    disable_abs_pos_emb: bool | None = option(
        None,
        "tell the wrapper not to add absolute positions; default True with rotary or the T5 "
        "bias (as x-transformers), else False",
    )

    def __post_init__(self) -> None:
        p = current_prefix()
        check_fields(self, "AttentionLayers", p)
        on = self.bias_keywords
        if len(on) > 1:
            raise ValueError(
                f"AttentionLayers: {' and '.join(p + n for n in on)} cannot be combined: choose "
                "one additive position bias"
            )
        if self.rotary_emb_dim is not None and (self.rotary_emb_dim < 2 or self.rotary_emb_dim % 2):
            raise ValueError(
                f"AttentionLayers: {p}rotary_emb_dim must be an even int >= 2, got "
                f"{self.rotary_emb_dim}"
            )
        if self.rotary_interpolation_factor < 1:
            raise ValueError(
                f"AttentionLayers: {p}rotary_interpolation_factor must be >= 1, got "
                f"{self.rotary_interpolation_factor}"
            )
        for name in ("rotary_xpos_scale_base", "rotary_base_rescale_factor", "rotary_theta"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"AttentionLayers: {p}{name} must be > 0, got {getattr(self, name)}"
                )
        self._check_local_theta(p)
        if not self.uses_rotary:
            changed = [n for n, d in _ROTARY_OPTIONS.items() if getattr(self, n) != d]
            if changed:
                raise ValueError(
                    f"AttentionLayers: {p}{changed[0]} was set but {p}rotary_pos_emb=False "
                    f"(turn {p}rotary_pos_emb on, or drop the option)"
                )
        check_scaling(self, p)
        if self.alibi_num_heads is not None:
            if not self.alibi_pos_bias:
                raise ValueError(
                    f"AttentionLayers: {p}alibi_num_heads was set but {p}alibi_pos_bias=False"
                )
            if self.alibi_num_heads < 1:
                raise ValueError(
                    f"AttentionLayers: {p}alibi_num_heads must be >= 1, got {self.alibi_num_heads}"
                )
        if self.rel_pos_num_buckets < 2 or self.rel_pos_num_buckets > self.rel_pos_max_distance:
            raise ValueError(
                f"AttentionLayers: {p}rel_pos_num_buckets must be in [2, {p}rel_pos_max_distance="
                f"{self.rel_pos_max_distance}], got {self.rel_pos_num_buckets}"
            )
        if self.dynamic_pos_bias_mlp_depth < 1:
            raise ValueError(
                f"AttentionLayers: {p}dynamic_pos_bias_mlp_depth must be >= 1, got "
                f"{self.dynamic_pos_bias_mlp_depth}"
            )

    @property
    def uses_rotary(self) -> bool:
        """rotary_xpos implies rotary_pos_emb (as in x-transformers)."""
        return self.rotary_pos_emb or self.rotary_xpos

    @property
    def bias_keywords(self) -> tuple[str, ...]:
        """The additive-bias keywords that are on (at most one)."""
        names = ("alibi_pos_bias", "rel_pos_bias", "dynamic_pos_bias")
        return tuple(n for n in names if getattr(self, n))

    @property
    def abs_pos_emb_disabled(self) -> bool:
        """Whether the wrapper leaves out absolute positions (x-transformers' default rule)."""
        if self.disable_abs_pos_emb is not None:
            return self.disable_abs_pos_emb
        return self.uses_rotary or self.rel_pos_bias

    def rotary_dim(self, dim_head: int) -> int:
        """Rotated features per head: the keyword, else max(dim_head // 2, 32) capped at dim_head."""
        if self.rotary_emb_dim is not None:
            return self.rotary_emb_dim
        return min(max(dim_head // 2, 32), dim_head - dim_head % 2)

    def _check_local_theta(self, p: str) -> None:
        local = self.rotary_local_theta
        if local is None:
            return
        if not local > 0:
            raise ValueError(f"AttentionLayers: {p}rotary_local_theta must be > 0, got {local}")
        if self.rotary_xpos:
            raise ValueError(
                f"AttentionLayers: {p}rotary_local_theta cannot be combined with {p}rotary_xpos "
                "(the local layers use plain rotary)"
            )

    def check_stack(
        self,
        *,
        causal: bool,
        dim: int,
        heads: int,
        dim_head: int,
        rotate_values: bool,
        value_dim_head: int | None = None,
    ) -> None:
        """Checks that need the stack's own options."""
        p = current_prefix()
        if rotate_values and not self.uses_rotary:
            raise ValueError(
                f"AttentionLayers: {p}attn_rotary_embed_values=True needs {p}rotary_pos_emb=True"
            )
        if rotate_values and value_dim_head not in (None, dim_head):
            raise ValueError(
                f"AttentionLayers: {p}attn_rotary_embed_values=True rotates values as the keys, "
                f"so it needs {p}attn_value_dim_head == {p}attn_dim_head ({dim_head}), got "
                f"{value_dim_head}"
            )
        if self.dynamic_pos_bias and dim < 4:
            raise ValueError(
                f"AttentionLayers: {p}dynamic_pos_bias needs dim >= 4 (its MLP is dim // 4 wide), "
                f"got dim={dim}"
            )
        if self.rel_pos_bias and not causal and self.rel_pos_num_buckets < 4:
            raise ValueError(
                f"AttentionLayers: {p}rel_pos_num_buckets must be >= 4 in a bidirectional stack "
                f"(each direction gets half), got {self.rel_pos_num_buckets}"
            )
        if self.rotary_xpos and not causal:
            raise ValueError(
                f"AttentionLayers: {p}rotary_xpos=True needs a causal stack (Decoder): xPos decays "
                "with distance in one direction only"
            )
        if self.alibi_num_heads is not None and self.alibi_num_heads > heads:
            raise ValueError(
                f"AttentionLayers: {p}alibi_num_heads must be <= {p}heads={heads}, got "
                f"{self.alibi_num_heads}"
            )
        if self.uses_rotary and self.rotary_dim(dim_head) > dim_head:
            raise ValueError(
                f"AttentionLayers: {p}rotary_emb_dim must be <= {p}attn_dim_head={dim_head}, got "
                f"{self.rotary_dim(dim_head)}"
            )
        if (
            self.uses_rotary
            and self.rotary_base_rescale_factor != 1
            and self.rotary_dim(dim_head) <= 2
        ):
            raise ValueError(
                f"AttentionLayers: {p}rotary_base_rescale_factor raises the base to d / (d - 2), "
                "so it needs more than 2 rotated features, got "
                f"{p}rotary_emb_dim={self.rotary_dim(dim_head)}"
            )
        if self.uses_rotary:
            check_scaling_stack(self, self.rotary_dim(dim_head), p)
        if self.uses_rotary and self.rotary_dim(dim_head) < 2:
            raise ValueError(
                f"AttentionLayers: {p}rotary_pos_emb needs {p}attn_dim_head >= 2, got {dim_head}"
            )
