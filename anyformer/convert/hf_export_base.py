"""Shared parts of the anyformer -> Hugging Face exporters: the exporter record and the
canonical option view used to prove that an export is exact.

An export is exact when the anyformer model rebuilt from the exported ``config.json`` (through
the import side, :mod:`anyformer.convert.hf`) has the same options as the model exported.
:func:`canonical_options` flattens a model's configuration into its public keywords with the
defaults resolved (``norm_eps=None`` -> the norm's epsilon, ``ff_mult`` -> ``ff_inner_dim``,
...) and without the options that do not change an eval-mode forward (dropouts, kernels,
initialisation, training-only losses), so that two models with equal canonical options compute
the same function from the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .hf_base import HFFamily

__all__ = ["HFExporter", "canonical_options", "configs", "split_rows"]

#: Options that leave an eval-mode forward unchanged (dropouts, kernels, initialisation,
#: auxiliary training losses): they are not compared.
IGNORED = frozenset(
    {
        "emb_dropout", "attn_z_loss_weight", "emb_frac_gradient", "layer_dropout",
        "cross_attn_tokens_dropout", "zero_init_branch_output", "attn_dropout", "attn_flash",
        "attn_kernel", "attn_onnxable", "attn_zero_init_output", "ff_dropout",
        "ff_zero_init_output", "ff_load_balance_loss_weight", "ff_router_z_loss_weight",
    }
)  # fmt: skip
_MOE_ONLY = ("ff_top_k", "ff_num_shared_experts", "ff_capacity_factor", "ff_router_renormalize")
_PREFIXES = {"attention": "attn_", "cross_attention": "cross_attn_", "feedforward": "ff_"}


@dataclass(frozen=True)
class HFExporter:
    """How to write one Hugging Face family from an anyformer model.

    ``config(net, head)`` returns the Hugging Face ``config.json`` dict (it may raise
    ``ValueError`` naming an option that cannot be written at all); ``weights(net, head)`` the
    Hugging Face state dict. ``family`` is the import side, used to rebuild the model from the
    written config and prove the export exact. ``architectures`` maps the head (``"lm"`` or
    ``"hidden"``) to the Hugging Face class name.
    """

    family: HFFamily
    architectures: Mapping[str, str]
    config: Callable[[nn.Module, str], dict[str, Any]]
    weights: Callable[[nn.Module, str], dict[str, Tensor]]
    model_class: str = "TransformerWrapper"  # the anyformer class it writes (or XTransformer)

    @property
    def name(self) -> str:
        return self.family.name


def configs(net: nn.Module) -> tuple[Any, Any]:
    """(the wrapper's config, the attention stack's config) of a TransformerWrapper."""
    stack: Any = net.get_submodule("attn_layers")
    wrapper: Any = net
    return wrapper.config, stack.config


def _flatten(config: Mapping[str, Any], out: dict[str, Any], prefix: str = "") -> None:
    for key, value in config.items():
        if key == "class" and prefix:
            continue
        if isinstance(value, Mapping) and key in _PREFIXES:
            _flatten(value, out, _PREFIXES[key])
        elif isinstance(value, Mapping) and key not in ("embed_num_tokens",):
            _flatten(value, out, prefix)  # norm, positions, ...: keyword names as they are
        else:
            out[prefix + key] = value


def _encoder_decoder_options(net: nn.Module) -> dict[str, Any]:
    """An XTransformer's options: each side's with its enc_/dec_ prefix, then its own."""
    model: Any = net
    sides = {"enc_": model.encoder, "dec_": model.decoder.net}
    options = {p + k: v for p, side in sides.items() for k, v in canonical_options(side).items()}
    top = {k: v for k, v in model.config_dict().items() if k not in ("encoder", "decoder")}
    options.update({k: v for k, v in top.items() if k not in ("ignore_index", *IGNORED)})
    return options


def canonical_options(net: nn.Module) -> dict[str, Any]:
    """The public keywords of a TransformerWrapper (or an XTransformer: each side's with its
    enc_/dec_ prefix) that determine its eval-mode function."""
    model: Any = net
    if type(net).__name__ == "XTransformer":
        return _encoder_decoder_options(net)
    raw = model.config_dict()
    stack = raw["attn_layers"]
    options: dict[str, Any] = {"stack": stack.get("class")}
    _flatten({k: v for k, v in raw.items() if k not in ("class", "attn_layers")}, options)
    _flatten({k: v for k, v in stack.items() if k != "class"}, options)
    if not options.get("cross_attend"):
        options = {k: v for k, v in options.items() if not k.startswith("cross_attn_")}
    _, stack_config = configs(net)
    options["norm_eps"] = stack_config.norm.eps
    attention = stack_config.attention
    if not attention.qk_norm:  # the scale q.k is multiplied by
        options["attn_scale"] = attention.logit_scale
    heads = stack_config.heads
    options["attn_kv_heads"] = stack_config.attention.kv_heads_for(heads)
    options.pop("attn_one_kv_head", None)
    if options.get("ff_inner_dim") is None:
        options["ff_inner_dim"] = int(stack_config.dim * stack_config.feedforward.mult)
    options.pop("ff_mult", None)
    if attention.sliding_window is not None:  # per layer: an int, a repeated tuple
        windows = tuple(attention.window_of_layer(i) for i in range(stack_config.depth))
        options["attn_sliding_window"] = None if windows == (None,) * len(windows) else windows
    positions = stack_config.positions
    one_base = positions.rotary_interpolation_factor == 1.0 and positions.rotary_scaling is None
    if options.get("attn_sliding_window") and positions.uses_rotary and one_base:
        # rotary_local_theta=None: the sliding-window layers use rotary_theta too
        options["rotary_local_theta"] = positions.rotary_local_theta or positions.rotary_theta
    if positions.uses_rotary:
        options["rotary_emb_dim"] = positions.rotary_dim(stack_config.attention.dim_head)
    options["use_abs_pos_emb"] = bool(getattr(net, "has_abs_pos_emb", False))
    options.pop("disable_abs_pos_emb", None)
    if not options["use_abs_pos_emb"]:
        options.pop("scaled_sinu_pos_emb", None)
    if options.get("ff_num_experts", 1) == 1:
        for key in _MOE_ONLY:
            options.pop(key, None)
    return {k: v for k, v in options.items() if k not in IGNORED}


def split_rows(t: Tensor, sizes: list[int]) -> list[Tensor]:
    """``t`` cut along its first dimension into copies of ``sizes`` rows."""
    return [part.clone() for part in torch.split(t.detach(), sizes)]
