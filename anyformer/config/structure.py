"""Stack structure: the layer-type sequence, the execution order and the checks that tie the
structure options of a StackConfig together (layer orders, residual schemes, token shift)."""

from __future__ import annotations

from typing import Any

from .options import current_prefix

__all__ = ["check_structure", "default_block", "execution_order", "layer_types", "per_layer"]

_OWNER = "AttentionLayers"


def default_block(config: Any) -> tuple[str, ...]:
    """One block of the stack: (a, f), (a, c, f) or (c, f); macaron puts an f in front."""
    if config.only_cross:
        block: tuple[str, ...] = ("c", "f")
    elif config.cross_attend:
        block = ("a", "c", "f")
    else:
        block = ("a", "f")
    return ("f", *block) if config.macaron else block


def _par_layer_types(block: tuple[str, ...], depth: int, par_ratio: int) -> tuple[str, ...]:
    """PAR Transformer (https://arxiv.org/abs/2009.04534): the attention layers (1 in par_ratio
    of all layers) sit in the first 2/3 of the stack, each followed by feedforwards; the rest
    of the stack is feedforward only."""
    par_depth = depth * len(block)
    p = current_prefix()
    if not 1 < par_ratio <= par_depth:
        raise ValueError(
            f"{_OWNER}: {p}par_ratio must be in (1, {par_depth}] (depth * layers per block), "
            f"got {par_ratio}"
        )
    attn_block = tuple(t for t in block if t != "f")
    par_attn = par_depth // par_ratio
    depth_cut = par_depth * 2 // 3
    par_width = (depth_cut + depth_cut // par_attn) // par_attn
    if len(attn_block) > par_width:
        raise ValueError(
            f"{_OWNER}: {p}par_ratio={par_ratio} leaves {par_width} layers per attention group, "
            f"fewer than the {len(attn_block)} attention layers of a block {attn_block}"
        )
    head = (attn_block + ("f",) * (par_width - len(attn_block))) * par_attn
    return head + ("f",) * (par_depth - len(head))


def layer_types(config: Any) -> tuple[str, ...]:
    """'a' self-attention, 'c' cross-attention, 'f' feedforward: the stack's layers, in order."""
    block = default_block(config)
    if config.weight_tie_layers:
        return block
    if config.custom_layers is not None:
        return config.custom_layers
    if config.par_ratio is not None:
        return _par_layer_types(block, config.depth, config.par_ratio)
    if config.sandwich_coef is not None:
        coef = config.sandwich_coef
        return ("a",) * coef + block * (config.depth - coef) + ("f",) * coef
    return block * config.depth


def execution_order(config: Any) -> tuple[int, ...]:
    """Indices into the layers, in the order they run (a layer may run several times)."""
    if config.layers_execute_order is not None:
        return config.layers_execute_order
    n = len(layer_types(config))
    if config.weight_tie_layers:
        return tuple(range(n)) * config.depth
    return tuple(range(n))


def per_layer(value: Any, count: int) -> tuple[Any, ...]:
    """A per-layer option: one value for every layer, or a tuple of exactly `count` values."""
    return value if isinstance(value, tuple) else (value,) * count


def _as_tuple(config: Any, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, list):
        object.__setattr__(config, name, tuple(value))


def normalise_sequences(config: Any) -> None:
    """Lists given for tuple options become tuples (before the type check)."""
    for name in ("custom_layers", "layers_execute_order", "shift_tokens", "layer_dropout"):
        _as_tuple(config, name)
    if isinstance(config.custom_layers, str):
        object.__setattr__(config, "custom_layers", tuple(config.custom_layers))


def _exclusive(config: Any, first: str, second: str, why: str) -> None:
    if getattr(config, first) not in (None, False) and getattr(config, second) not in (None, False):
        p = current_prefix()
        raise ValueError(f"{_OWNER}: {p}{first} and {p}{second} cannot be combined: {why}")


def _check_orders(config: Any) -> None:
    p = current_prefix()
    for other in ("custom_layers", "par_ratio", "sandwich_coef", "layers_execute_order"):
        _exclusive(
            config,
            "weight_tie_layers",
            other,
            "weight tying fixes the layers (one block) and their order (the block, depth times)",
        )
    _exclusive(config, "custom_layers", "par_ratio", "both give the layer types")
    _exclusive(config, "custom_layers", "sandwich_coef", "both give the layer types")
    _exclusive(config, "par_ratio", "sandwich_coef", "both give the layer types")
    if config.custom_layers is not None:
        bad = [t for t in config.custom_layers if t not in ("a", "c", "f")]
        if bad or not config.custom_layers:
            raise ValueError(
                f"{_OWNER}: {p}custom_layers must be a non-empty sequence of 'a', 'c', 'f', "
                f"got {config.custom_layers!r}"
            )
        if "c" in config.custom_layers and not config.cross_attend:
            raise ValueError(
                f"{_OWNER}: {p}custom_layers with 'c' layers needs {p}cross_attend=True"
            )
    if config.sandwich_coef is not None and not 0 < config.sandwich_coef <= config.depth:
        raise ValueError(
            f"{_OWNER}: {p}sandwich_coef must be in [1, {p}depth={config.depth}], "
            f"got {config.sandwich_coef}"
        )
    count = len(layer_types(config))
    order = config.layers_execute_order
    if order is not None and (not order or any(not 0 <= i < count for i in order)):
        raise ValueError(
            f"{_OWNER}: {p}layers_execute_order must be a non-empty sequence of layer indices in "
            f"[0, {count}), got {order!r}"
        )


def _check_per_layer(config: Any, name: str, low: float, high: float | None) -> None:
    value = getattr(config, name)
    count = len(layer_types(config))
    if isinstance(value, tuple) and len(value) != count:
        raise ValueError(
            f"{_OWNER}: {current_prefix()}{name} as a tuple needs one value per layer ({count} "
            f"layers: {''.join(layer_types(config))}), got {len(value)}"
        )
    for v in per_layer(value, count):
        if v < low or (high is not None and v >= high):
            span = f"[{low}, {high})" if high is not None else f">= {low}"
            raise ValueError(
                f"{_OWNER}: {current_prefix()}{name} values must be {span}, got {value!r}"
            )


def _check_residuals(config: Any) -> None:
    p = current_prefix()
    if config.sandwich_norm and not config.pre_norm:
        raise ValueError(
            f"{_OWNER}: {p}sandwich_norm=True needs {p}pre_norm=True (the sandwich norm is the "
            "pre-norm block's extra norm on the branch output)"
        )
    _exclusive(
        config, "sandwich_norm", "resi_dual", "ResiDual's post-norm stream has its own norms"
    )
    if not 0 < config.resi_dual_scale <= 1:
        raise ValueError(
            f"{_OWNER}: {p}resi_dual_scale must be in (0, 1], got {config.resi_dual_scale}"
        )
    if config.resi_dual and not config.pre_norm_has_final_norm:
        raise ValueError(
            f"{_OWNER}: {p}resi_dual=True needs its final norm (of the pre-norm stream); "
            f"{p}pre_norm_has_final_norm=False cannot be combined with it"
        )
    if config.gate_residual and config.scale_residual_constant != 1:
        raise ValueError(
            f"{_OWNER}: {p}gate_residual=True and {p}scale_residual_constant="
            f"{config.scale_residual_constant} cannot be combined: the GRU gate replaces the "
            "sum the constant would scale (x-transformers ignores the constant there)"
        )
    if not config.scale_residual_constant > 0:
        raise ValueError(
            f"{_OWNER}: {p}scale_residual_constant must be > 0, got "
            f"{config.scale_residual_constant}"
        )


def _check_hyper(config: Any) -> None:
    p = current_prefix()
    if config.num_residual_streams < 1:
        raise ValueError(
            f"{_OWNER}: {p}num_residual_streams must be >= 1, got {config.num_residual_streams}"
        )
    if config.hyper_conn_sinkhorn_iters < 0:
        raise ValueError(
            f"{_OWNER}: {p}hyper_conn_sinkhorn_iters must be >= 0, got "
            f"{config.hyper_conn_sinkhorn_iters}"
        )
    if config.num_residual_streams == 1:
        return
    for name in ("gate_residual", "resi_dual", "reinject_input", "scale_residual"):
        if getattr(config, name):
            raise ValueError(
                f"{_OWNER}: {p}num_residual_streams={config.num_residual_streams} "
                f"(hyper-connections) replaces the residual connection, which {p}{name}=True "
                "also changes: drop one of the two"
            )
    if config.scale_residual_constant != 1:
        raise ValueError(
            f"{_OWNER}: {p}num_residual_streams > 1 (hyper-connections) cannot be combined with "
            f"{p}scale_residual_constant={config.scale_residual_constant}"
        )


def _check_streams(config: Any) -> None:
    """The residual-stream options (layer scale, value residual, reinjection, U-Net skips)."""
    p = current_prefix()
    _exclusive(config, "use_layerscale", "use_adaptive_layerscale", "both scale the branch")
    if config.learned_reinject_input_gate and not config.reinject_input:
        raise ValueError(
            f"{_OWNER}: {p}learned_reinject_input_gate=True gates the reinjected input: it "
            f"needs {p}reinject_input=True"
        )
    if config.norm.kind == "dynamic_tanh" and not config.pre_norm:
        raise ValueError(
            f"{_OWNER}: {p}use_dynamic_tanh=True replaces the pre-norms: it needs {p}pre_norm=True"
        )
    if config.resi_dual and (config.norm.conditioned or config.use_adaptive_layerscale):
        raise ValueError(
            f"{_OWNER}: {p}resi_dual=True cannot be combined with norms or scales conditioned "
            "on forward's condition"
        )
    _check_hyper(config)
    kv_heads = config.attention.kv_heads_for(config.heads)
    learned = config.add_value_residual and config.learned_value_residual_mix
    if learned and kv_heads != config.heads:
        raise ValueError(
            f"{_OWNER}: {p}add_value_residual=True with {p}learned_value_residual_mix=True "
            f"weights the values per query head, but the stack has {kv_heads} key/value heads "
            f"for {p}heads={config.heads}: set {p}learned_value_residual_mix=False (a 0.5 mix)"
        )
    if not config.unet_skips:
        return
    for other in ("custom_layers", "par_ratio", "sandwich_coef", "layers_execute_order"):
        _exclusive(config, "unet_skips", other, "the skips pair the blocks of the default order")
    _exclusive(config, "unet_skips", "weight_tie_layers", "the skips pair distinct blocks")
    kept, latter = config.depth // len(default_block(config)), config.depth // 2
    if kept < 1 or kept < latter:
        raise ValueError(
            f"{_OWNER}: {p}unet_skips=True keeps depth // {len(default_block(config))} (layers "
            f"per block) = {kept} block inputs for the {latter} blocks of the latter half "
            f"(x-transformers 2.x's pairing): needs {p}depth >= 2 and blocks of at most 2 layers"
        )


def check_structure(config: Any) -> None:
    """Validate the structure options of a StackConfig (errors name the keywords)."""
    p = current_prefix()
    _check_orders(config)
    _check_residuals(config)
    _check_streams(config)
    _check_per_layer(config, "shift_tokens", 0, None)
    widest = max(per_layer(config.shift_tokens, 1))
    groups = widest + 1 if config.causal else 2 * widest + 1
    if widest and groups > config.dim:
        raise ValueError(
            f"{_OWNER}: {p}shift_tokens={widest} splits each input into {groups} channel groups, "
            f"more than dim={config.dim} channels"
        )
    _check_per_layer(config, "layer_dropout", 0.0, 1.0)
    if not 0.0 <= config.cross_attn_tokens_dropout < 1.0:
        raise ValueError(
            f"{_OWNER}: {p}cross_attn_tokens_dropout must be in [0, 1), "
            f"got {config.cross_attn_tokens_dropout}"
        )
