"""Composition: attention, feedforward and norm modules given per layer, beside the flags.

A stack built from flags makes every module itself. The ``*_factory`` keywords of
AttentionLayers (so Encoder, Decoder, PrefixDecoder, CrossAttender) put modules the user made
into some or all of its layers, as torchtune composes models
(https://pytorch.org/torchtune/stable/basics/model_transforms.html); the flags remain one way to
make the rest. Each keyword takes a mapping ``{layer index: module}`` or a factory
``(layer index) -> module | None`` (None: the flag-built module for that layer), called once per
layer of its kind at construction. A layer index is an index into ``stack.layers`` (and
``stack.layer_types``); ``norm_factory`` also takes ``len(stack.layers)``, the final norm.

The protocol a given module follows (``GivenAttention``, ``GivenFeedForward``, ``GivenNorm``):

- attention (``attn_factory`` for the 'a' layers, ``cross_attn_factory`` for the 'c' layers):
  ``module(x, *, context, plan, positions, cache) -> Tensor``, with x (b, n, dim) the block's
  normalised rows (in cached decoding, only the new rows); ``context`` (b, m, dim_context) for
  cross-attention, None for self-attention and on cached cross-attention steps after the first;
  ``plan`` an ``AttentionMask``: ``plan.sdpa_args(n, k_len, dtype, device)`` gives
  ``F.scaled_dot_product_attention``'s (attn_mask, is_causal), stack biases (ALiBi, T5) included,
  ``plan.keep(n, k_len, device)`` the boolean keep-mask (None: every key), and rows whose
  ``plan.row_valid`` is False see no key and should output zeros; ``positions`` (b|1, n) the
  integer positions of the rows (self-attention; None for cross-attention); ``cache`` a
  ``LayerKVCache`` or None: self-attention writes its new keys/values (b, h, n, d) with
  ``k, v = cache.update(k, v)`` (which returns every cached row), cross-attention stores the
  context's once with ``cache.set_context(k, v)`` and reads ``cache.k``/``cache.v`` once
  ``cache.filled``. A module that does so sets ``can_cache_kv = True`` (the built-in Attention
  does, and can be given as it is); without it the stack reports ``can_cache_kv`` False,
  ``generate`` decodes without a cache (with a warning) and a forward with ``cache=`` raises.
  Given attention returns no attention maps (``return_attn`` raises) nor Transformer-XL
  memories, and cannot join residual attention (``residual_attn`` / ``cross_residual_attn``).
- feedforward (``ff_factory``, the 'f' layers): ``module(x) -> Tensor``, (b, n, dim) -> (b, n,
  dim); Macaron's half step still scales it.
- norm (``norm_factory``): ``module(x) -> Tensor`` over the last dim; at index i < len(layers)
  the norm of block i (its pre-norm, or its post-norm with ``pre_norm=False``; a sandwich norm
  stays flag-built), at index len(layers) the final norm (where the stack has one).

The block structure around a given module (residual, token shift, ResiDual) is flag-built as
usual; ``zero_init_branch_output`` and ``reset_parameters()`` treat given modules as their own
``reset_parameters`` says. A stack holding given modules has no ``config_dict()``: a config
cannot describe them (save its ``state_dict`` and rebuild it with the same factories).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from torch import Tensor, nn

if TYPE_CHECKING:
    from ..cache import LayerKVCache
    from ..nn.masks import AttentionMask

__all__ = [
    "GivenAttention",
    "GivenFeedForward",
    "GivenModules",
    "GivenNorm",
    "LayerModules",
]

LayerModules: TypeAlias = Mapping[int, nn.Module] | Callable[[int], nn.Module | None]
"""A mapping {layer index: module}, or a factory (layer index) -> module | None."""

_KINDS = {
    "a": ("attn_factory", "self-attention"),
    "c": ("cross_attn_factory", "cross-attention"),
    "f": ("ff_factory", "feedforward"),
    "n": ("norm_factory", "norm"),
}


class GivenAttention(Protocol):
    """The call a stack makes to a given attention module (see the module docstring)."""

    def __call__(
        self,
        x: Tensor,
        *,
        context: Tensor | None,
        plan: AttentionMask,
        positions: Tensor | None,
        cache: LayerKVCache | None,
    ) -> Tensor: ...


class GivenFeedForward(Protocol):
    """The call a stack makes to a given feedforward module: (b, n, dim) -> (b, n, dim)."""

    def __call__(self, x: Tensor) -> Tensor: ...


class GivenNorm(Protocol):
    """The call a stack makes to a given norm: normalises over the last dim, shape kept."""

    def __call__(self, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class GivenModules:
    """The ``*_factory`` keywords of a stack, checked against its layer types."""

    attn: LayerModules | None = None  # self-attention modules, for the 'a' layers
    cross_attn: LayerModules | None = None  # cross-attention modules, for the 'c' layers
    ff: LayerModules | None = None  # feedforward modules, for the 'f' layers
    norm: LayerModules | None = None  # block norms (index len(layers): the final norm)

    def _value(self, kind: str) -> LayerModules | None:
        return {"a": self.attn, "c": self.cross_attn, "f": self.ff, "n": self.norm}[kind]

    def check(self, owner: str, layer_types: tuple[str, ...], final_norm: bool) -> None:
        """TypeError / ValueError naming the keyword for values that cannot fill these layers."""
        for kind, (name, _) in _KINDS.items():
            value = self._value(kind)
            if value is None:
                continue
            if isinstance(value, nn.Module):
                raise TypeError(
                    f"{owner}: {name} must be a mapping {{layer index: module}} or a factory "
                    f"(layer index) -> module | None, got one {type(value).__name__} module "
                    f"(one module in every layer would share its weights): pass "
                    f"{{index: module}} or a factory such as lambda i: {type(value).__name__}(...)"
                )
            if isinstance(value, Mapping):
                _check_mapping(owner, name, kind, value, layer_types, final_norm)
            elif not callable(value):
                raise TypeError(
                    f"{owner}: {name} must be a mapping {{layer index: module}} or a factory "
                    f"(layer index) -> module | None, got {type(value).__name__}"
                )

    def module(self, kind: str, index: int, owner: str) -> nn.Module | None:
        """The module given for layer `index` of `kind` ('a', 'c', 'f', 'n'), or None."""
        value = self._value(kind)
        if value is None:
            return None
        if isinstance(value, Mapping):
            return value.get(index)
        made = value(index)
        if made is not None and not isinstance(made, nn.Module):
            raise TypeError(
                f"{owner}: {_KINDS[kind][0]}({index}) must return an nn.Module or None, "
                f"got {type(made).__name__}"
            )
        return made


def _check_mapping(
    owner: str,
    name: str,
    kind: str,
    value: Mapping[Any, Any],
    layer_types: tuple[str, ...],
    final_norm: bool,
) -> None:
    """Every key a layer of the keyword's kind, every value an nn.Module."""
    count = len(layer_types)
    if kind == "n":
        valid = list(range(count + 1 if final_norm else count))
    else:
        valid = [i for i, t in enumerate(layer_types) if t == kind]
    for key, module in value.items():
        if isinstance(key, bool) or not isinstance(key, int):
            raise TypeError(
                f"{owner}: {name} keys must be int layer indices, got {type(key).__name__} {key!r}"
            )
        if key not in valid:
            what = _KINDS[kind][1]
            found = f"a {_KINDS[layer_types[key]][1]} layer" if 0 <= key < count else "no layer"
            raise ValueError(
                f"{owner}: {name} key {key} is {found}; the {what} layers of this stack "
                f"(layer_types {''.join(layer_types)!r}) are at {valid}"
            )
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"{owner}: {name}[{key}] must be an nn.Module, got {type(module).__name__}"
            )
