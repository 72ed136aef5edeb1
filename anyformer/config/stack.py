"""StackConfig and the parser that turns AttentionLayers keywords into it.

Keywords travel once: ``attn_*`` to self-attention, ``cross_attn_*`` to cross-attention (over the
self-attention options), ``ff_*`` to the feedforward; everything else is a stack option. Typos,
collisions with the stack's own arguments and unknown names raise ``TypeError`` here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .attention import AttentionConfig
from .feedforward import FeedForwardConfig
from .later import LATER_ATTENTION, LATER_STACK, raise_if_later
from .norm import NormConfig
from .options import build_options, check_fields, current_prefix, option, unknown_keyword
from .positions import PositionConfig
from .structure import check_structure, execution_order, layer_types, normalise_sequences

__all__ = ["StackConfig", "parse_stack_config", "stack_keyword_names"]

# Prefixed names that would collide with an argument the stack itself supplies.
_RESERVED = {
    "attn_": {
        "dim": "the attention width is the stack's `dim`",
        "heads": "set `heads` on the stack",
        "causal": "causality is set by the stack (Decoder / Encoder / causal=)",
        "dim_context": "self-attention reads the stack's `dim`; use cross_attn_dim_context",
    },
    "cross_attn_": {
        "dim": "the attention width is the stack's `dim`",
        "heads": "set `heads` on the stack",
        "causal": "cross-attention is never causal",
    },
    "ff_": {
        "dim": "the feedforward width is the stack's `dim`; use ff_mult for the hidden width",
        "dim_out": "the feedforward output width is the stack's `dim`",
    },
}

_PREFIXES = ("cross_attn_", "attn_", "ff_")  # longest first: cross_attn_ before attn_


@dataclass(frozen=True)
class StackConfig:
    """The resolved options of an AttentionLayers stack."""

    dim: int = option(None, "model width")
    depth: int = option(
        None, "number of blocks (each: attention [+ cross-attention] + feedforward)"
    )
    heads: int = option(8, "number of attention heads")
    causal: bool = option(False, "causal self-attention (Decoder)")
    cross_attend: bool = option(False, "add a cross-attention layer to every block")
    only_cross: bool = option(False, "blocks hold cross-attention and feedforward only")
    pre_norm: bool = option(
        True, "pre-LN (True) or post-LN (False) blocks", "https://arxiv.org/abs/2002.04745"
    )
    pre_norm_has_final_norm: bool = option(True, "with pre-LN, a final norm after the stack")
    # --- structure: norms and residuals (config/structure.py checks how they combine) ---
    sandwich_norm: bool = option(
        False, "an extra norm on every branch output (CogView)", "https://arxiv.org/abs/2105.13290"
    )
    resi_dual: bool = option(
        False,
        "ResiDual: post-LN blocks plus a second, pre-LN stream of the summed branch outputs",
        "https://arxiv.org/abs/2304.14802",
    )
    resi_dual_scale: float = option(
        1.0, "ResiDual: scale of the pre-LN stream's inputs, in (0, 1] (fp16 overflow guard)"
    )
    gate_residual: bool = option(
        False,
        "GRU-gated residual: stream = GRUCell(branch output, stream)",
        "https://arxiv.org/abs/1910.06764",
    )
    scale_residual: bool = option(
        False,
        "learned per-channel scale on the residual stream (NormFormer)",
        "https://arxiv.org/abs/2110.09456",
    )
    scale_residual_constant: float = option(
        1.0,
        "constant multiplier on the residual stream (DeepNet)",
        "https://arxiv.org/abs/2203.00555",
    )
    zero_init_branch_output: bool = option(
        False, "zero-initialise every attention and feedforward output projection"
    )
    # --- residual streams (config/structure.py checks them; stack/streams.py runs them) ---
    use_layerscale: bool = option(
        False,
        "LayerScale: every branch output times a learned per-channel vector",
        "https://arxiv.org/abs/2103.17239",
    )
    layerscale_init_value: float = option(0.0, "LayerScale: the vector's initial value")
    use_adaptive_layerscale: bool = option(
        False,
        "adaLN-Zero gate: every branch output times sigmoid(linear(condition)) (DiT; with an "
        "adaptive norm, forward's condition=)",
        "https://arxiv.org/abs/2212.09748",
    )
    add_value_residual: bool = option(
        False,
        "value residual learning: every attention's values are mixed with the first "
        "attention's values of its kind (ResFormer)",
        "https://arxiv.org/abs/2410.17897",
    )
    learned_value_residual_mix: bool = option(
        True,
        "value residual: self-attention mixes with a per-token, per-head learned weight "
        "sigmoid(linear(x)) (False: 0.5)",
    )
    reinject_input: bool = option(
        False,
        "add a linear map of the stack's input to every branch input (before its norm)",
        "https://arxiv.org/abs/1909.01377",
    )
    learned_reinject_input_gate: bool = option(
        False, "reinject_input: gate the reinjected input per token by sigmoid(linear(input))"
    )
    num_residual_streams: int = option(
        1,
        "hyper-connections: this many residual streams, mixed per token by learned dynamic "
        "weights (1: the plain residual)",
        "https://arxiv.org/abs/2409.19606",
    )
    hyper_conn_sinkhorn_iters: int = option(
        5,
        "hyper-connections: Sinkhorn iterations making the stream mixing doubly stochastic (mHC)",
        "https://arxiv.org/abs/2512.24880",
    )
    unet_skips: bool = option(
        False,
        "U-Net skips: the latter half's blocks take a linear map of [an earlier block's input, "
        "their input] (as x-transformers 2.x)",
    )
    # --- structure: layer orders ---
    custom_layers: tuple[str, ...] | None = option(
        None, "explicit layer types, e.g. ('a', 'f', 'f'): 'a' self-, 'c' cross-attention, 'f' ff"
    )
    sandwich_coef: int | None = option(
        None,
        "Sandwich Transformer: coef attention layers first, coef feedforwards last",
        "https://arxiv.org/abs/1911.03864",
    )
    par_ratio: int | None = option(
        None,
        "PAR Transformer: one attention layer per par_ratio layers, in the first 2/3",
        "https://arxiv.org/abs/2009.04534",
    )
    macaron: bool = option(
        False,
        "Macaron: feedforward - attention - feedforward blocks with half-step feedforwards",
        "https://arxiv.org/abs/1906.02762",
    )
    weight_tie_layers: bool = option(
        False, "one block's weights reused depth times (ALBERT)", "https://arxiv.org/abs/1909.11942"
    )
    layers_execute_order: tuple[int, ...] | None = option(
        None, "layer indices in the order they run; a layer may run several times (shared weights)"
    )
    shift_tokens: int | tuple[int, ...] = option(
        0,
        "token shift: the branch input's channels in s + 1 (causal) or 2s + 1 groups, group k "
        "taken from k positions earlier (int, or one per layer)",
        "https://github.com/BlinkDL/RWKV-LM",
    )
    layer_dropout: float | tuple[float, ...] = option(
        0.0,
        "stochastic depth: probability of skipping a layer while training (float, or one per layer)",
        "https://arxiv.org/abs/1603.09382",
    )
    cross_attn_tokens_dropout: float = option(
        0.0,
        "fraction of context tokens dropped (once per forward) while training (Perceiver AR)",
        "https://arxiv.org/abs/2202.07765",
    )
    residual_attn: bool = option(
        False,
        "residual attention: each self-attention adds the previous one's pre-softmax logits to "
        "its own (explicit attention path)",
        "https://arxiv.org/abs/2012.11747",
    )
    cross_residual_attn: bool = option(
        False,
        "residual attention across the cross-attention layers (explicit attention path)",
        "https://arxiv.org/abs/2012.11747",
    )
    softclamp_output: bool = option(
        False,
        "soft-cap the stack's output before the final norm: v * tanh(x / v), "
        "v = softclamp_output_value (x-transformers 2.x)",
        "https://arxiv.org/abs/2408.00118",
    )
    softclamp_output_value: float = option(30.0, "softclamp_output: the cap v (> 0)")
    attention: AttentionConfig = option(AttentionConfig(), "self-attention options (attn_*)")
    cross_attention: AttentionConfig = option(
        AttentionConfig(), "cross-attention options (cross_attn_* over attn_*)"
    )
    feedforward: FeedForwardConfig = option(FeedForwardConfig(), "feedforward options (ff_*)")
    norm: NormConfig = option(NormConfig(), "norm options (norm_eps, norm_bias, ...)")
    positions: PositionConfig = option(
        PositionConfig(), "positional scheme (rotary_*, alibi_*, rel_pos_*, dynamic_pos_bias_*)"
    )

    def __post_init__(self) -> None:
        normalise_sequences(self)
        p = current_prefix()
        check_fields(self, "AttentionLayers", p)
        for name in ("dim", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"AttentionLayers: {p}{name} must be >= 1, got {getattr(self, name)}"
                )
        if self.only_cross and not self.cross_attend:
            raise ValueError(f"AttentionLayers: {p}only_cross=True needs {p}cross_attend=True")
        for name, attn, prefix in (
            ("residual_attn", self.attention, "attn_"),
            ("cross_residual_attn", self.cross_attention, "cross_attn_"),
        ):
            if getattr(self, name) and attn.flash:
                raise ValueError(
                    f"AttentionLayers: {p}{name}=True must see the attention matrix (explicit "
                    f"path), but {p}{prefix}flash=True asks for the fused kernel: drop one of "
                    "the two"
                )
        check_structure(self)
        if not self.softclamp_output_value > 0:
            raise ValueError(
                f"AttentionLayers: {p}softclamp_output_value must be > 0, got "
                f"{self.softclamp_output_value}"
            )
        if self.softclamp_output_value != 30.0 and not self.softclamp_output:
            raise ValueError(
                f"AttentionLayers: {p}softclamp_output_value was set but {p}softclamp_output=False"
            )
        self._check_qk_scale_with_rotary()
        if self.attention.data_dependent_alibi and self.positions.bias_keywords:
            raise ValueError(
                f"AttentionLayers: {p}attn_data_dependent_alibi=True is an additive position "
                f"bias; drop {p}{self.positions.bias_keywords[0]}=True (at most one)"
            )
        self.positions.check_stack(
            causal=self.causal,
            dim=self.dim,
            heads=self.heads,
            dim_head=self.attention.dim_head,
            rotate_values=self.attention.rotary_embed_values,
            value_dim_head=self.attention.value_dim_head,
        )

    def _check_qk_scale_with_rotary(self) -> None:
        """qk_norm_dim_scale folds the key scale into the queries, which rotary positions do not
        commute with when a key head serves several query heads."""
        attn, p = self.attention, current_prefix()
        kv_heads = attn.kv_heads_for(self.heads)
        if attn.qk_norm_dim_scale and kv_heads != self.heads and self.positions.uses_rotary:
            kv = "one_kv_head=True" if attn.one_kv_head else f"kv_heads={kv_heads}"
            raise ValueError(
                f"AttentionLayers: {p}attn_qk_norm_dim_scale=True with {p}attn_{kv} (fewer "
                f"key/value heads than {p}heads={self.heads}) cannot be combined with "
                f"{p}rotary_pos_emb: the key scale is folded into the queries, which rotary does not commute with"
            )

    @property
    def layer_types(self) -> tuple[str, ...]:
        """'a' self-attention, 'c' cross-attention, 'f' feedforward: the layers, as built."""
        return layer_types(self)

    @property
    def execution_order(self) -> tuple[int, ...]:
        """Indices into layer_types in the order the layers run."""
        return execution_order(self)

    @property
    def disable_abs_pos_emb(self) -> bool:
        """Whether the wrapper leaves out absolute positions (resolved from the positions)."""
        return self.positions.abs_pos_emb_disabled

    @property
    def has_final_norm(self) -> bool:
        return (self.pre_norm and self.pre_norm_has_final_norm) or self.resi_dual

    @property
    def block_pre_norm(self) -> bool:
        """Whether blocks normalise the branch input (pre-LN); ResiDual blocks are post-LN."""
        return self.pre_norm and not self.resi_dual


#: Groups of un-prefixed stack keywords, each parsed into its own config: a keyword goes to the
#: group that declares a field of its name, else to StackConfig itself.
STACK_GROUPS: dict[str, type] = {"norm": NormConfig, "positions": PositionConfig}

#: Prefixed groups: prefix -> (StackConfig field, config class).
PREFIX_GROUPS: dict[str, tuple[str, type]] = {
    "cross_attn_": ("cross_attention", AttentionConfig),
    "attn_": ("attention", AttentionConfig),
    "ff_": ("feedforward", FeedForwardConfig),
}

_SUBCONFIG_FIELDS = {"attention", "cross_attention", "feedforward", *STACK_GROUPS}


def _own_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(StackConfig) if f.name not in _SUBCONFIG_FIELDS]


def _valid_names() -> list[str]:
    attn = [f.name for f in dataclasses.fields(AttentionConfig)] + list(LATER_ATTENTION)
    ff = [f.name for f in dataclasses.fields(FeedForwardConfig)]
    groups = [f.name for cls in STACK_GROUPS.values() for f in dataclasses.fields(cls)]
    return (
        _own_fields()
        + groups
        + list(LATER_STACK)
        + ["attn_" + n for n in attn]
        + ["cross_attn_" + n for n in attn]
        + ["ff_" + n for n in ff]
    )


def stack_keyword_names() -> list[str]:
    """Every keyword an AttentionLayers constructor accepts (or knows but has not implemented)."""
    return _valid_names()


def _build(cls: type, owner: str, prefix: str, kwargs: dict[str, Any], base: Any = None) -> Any:
    for name in kwargs:
        reason = _RESERVED.get(prefix, {}).get(name)
        if reason:
            raise TypeError(f"{owner}: keyword {prefix + name!r} is not accepted: {reason}")
    later = LATER_ATTENTION if "attn" in prefix else {}
    return build_options(
        cls, owner, kwargs, prefix=prefix, later=later, valid=_valid_names(), base=base
    )


def parse_stack_config(
    owner: str, stack_args: dict[str, Any], kwargs: dict[str, Any]
) -> StackConfig:
    """Split prefixed keywords, check every name, and build the frozen StackConfig."""
    raise_if_later(owner, kwargs, LATER_STACK)  # before prefix routing: cross_attn_tokens_dropout
    prefixed: dict[str, dict[str, Any]] = {p: {} for p in PREFIX_GROUPS}
    grouped: dict[str, dict[str, Any]] = {g: {} for g in STACK_GROUPS}
    group_of = {f.name: g for g, cls in STACK_GROUPS.items() for f in dataclasses.fields(cls)}
    own = set(_own_fields())
    stack_level: dict[str, Any] = {}
    for key, value in kwargs.items():
        prefix = next((p for p in PREFIX_GROUPS if key.startswith(p)), None)
        if key in own and key not in stack_args:  # before prefixes: cross_attn_tokens_dropout
            stack_level[key] = value
        elif prefix is not None:
            prefixed[prefix][key[len(prefix) :]] = value
        elif key in group_of:
            grouped[group_of[key]][key] = value
        else:
            raise unknown_keyword(owner, key, _valid_names())

    attention = _build(AttentionConfig, owner, "attn_", prefixed["attn_"])
    cross = _build(AttentionConfig, owner, "cross_attn_", prefixed["cross_attn_"], base=attention)
    feedforward = _build(FeedForwardConfig, owner, "ff_", prefixed["ff_"])
    groups = {
        name: build_options(cls, owner, grouped[name], valid=_valid_names())
        for name, cls in STACK_GROUPS.items()
    }
    return StackConfig(
        **stack_args,
        **stack_level,
        attention=attention,
        cross_attention=cross,
        feedforward=feedforward,
        **groups,
    )
