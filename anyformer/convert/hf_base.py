"""Shared parts of the Hugging Face converters: the family record, config access that names
unsupported options, and a weight loader that checks every tensor is used exactly once.

A family module (``hf_gpt2``, ``hf_llama``, ...) reads a Hugging Face ``config.json`` dict into
anyformer keywords (``build``), and copies the checkpoint's tensors into the built model
(``load``) through :class:`WeightLoader`, whose ``set_*`` helpers are the only code that knows
how anyformer lays out its parameters (fused q/k/v, GLU halves, ...). Nothing here imports
``transformers``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "HFConfig",
    "HFFamily",
    "UnsupportedHFModel",
    "WeightLoader",
    "check_divisible",
    "hf_activation",
    "layer_pairs",
    "optional_tensor",
    "tied_head",
]

_MISSING = object()


class UnsupportedHFModel(ValueError):
    """A Hugging Face architecture, option or checkpoint that the converter cannot reproduce."""


@dataclass(frozen=True)
class HFFamily:
    """One Hugging Face model family and how to convert it.

    ``architectures`` maps each supported class name to what the anyformer model returns:
    ``"lm"`` (logits through the LM head), ``"hidden"`` (the last hidden state) or
    ``"classes"`` (class logits of an image classifier).
    ``build(config, head)`` returns the anyformer model (random weights);
    ``load(loader, config, model, head)`` copies every checkpoint tensor into it.
    ``prefixes`` are the key prefixes a checkpoint may put before the base model's names
    (``"transformer."`` in GPT2LMHeadModel, none in the original GPT-2 files);
    ``probe`` is a base-model key present in every checkpoint, used to find the prefix.
    """

    name: str
    model_types: tuple[str, ...]
    architectures: Mapping[str, str]
    build: Callable[[HFConfig, str], nn.Module]
    load: Callable[[WeightLoader, HFConfig, nn.Module, str], None]
    prefixes: tuple[str, ...]
    probe: str
    ignore: tuple[str, ...] = ()  # fnmatch patterns of checkpoint keys that are not weights
    # (config dict, checkpoint tensors) -> the config dict build reads: settles what only the
    # stored tensors tell (T5: whether the LM head is tied)
    prepare: Callable[[dict[str, Any], Mapping[str, Tensor]], dict[str, Any]] | None = None


class HFConfig:
    """A Hugging Face config dict whose reads name the option when its value is unsupported."""

    def __init__(self, data: Mapping[str, Any], family: str) -> None:
        self.data = dict(data)
        self.family = family

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``; a missing key without a default raises naming it."""
        value = self.data.get(key, default)
        if value is _MISSING:
            raise UnsupportedHFModel(f"{self.family} config: missing the option {key!r}")
        return value

    def value_or(self, key: str, default: Any) -> Any:
        """``key``'s value, or ``default`` when missing or null."""
        value = self.data.get(key)
        return default if value is None else value

    def require(self, key: str, allowed: Collection[Any], default: Any = _MISSING) -> Any:
        """``key``'s value, which must be one of ``allowed`` (else UnsupportedHFModel naming it)."""
        value = self.get(key, default)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise UnsupportedHFModel(
                f"{self.family} config: option {key}={value!r} is not supported by the anyformer "
                f"converter (supported: {choices})"
            )
        return value

    def unsupported(self, key: str, value: Any, why: str) -> UnsupportedHFModel:
        """The error for an option whose value cannot be reproduced."""
        return UnsupportedHFModel(
            f"{self.family} config: option {key}={value!r} is not supported by the anyformer "
            f"converter ({why})"
        )


def hf_activation(config: HFConfig, key: str, allowed: Collection[str]) -> dict[str, bool]:
    """ff_* keywords for a Hugging Face activation name (``hidden_act`` and the like)."""
    act = config.require(key, tuple(allowed))
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        # gelu_fast is the same tanh approximation, written with a different constant order
        return {"ff_gelu_tanh": True}
    if act in ("silu", "swish"):
        return {"ff_swish": True}
    return {}  # "gelu": the exact (erf) GELU, anyformer's default


class WeightLoader:
    """Copies checkpoint tensors into a model: every tensor used once, every parameter set once.

    ``finish()`` raises when a checkpoint tensor was not used (a feature the converter would
    silently drop) or a model parameter was not set (it would keep its random init).
    """

    def __init__(
        self,
        tensors: Mapping[str, Tensor],
        model: nn.Module,
        source: str,
        prefix: str = "",
        ignore: Collection[str] = (),
    ) -> None:
        self.tensors = tensors
        self.model = model
        self.source = source
        self.prefix = prefix
        self.ignore = tuple(ignore)
        self.used: set[str] = set()
        self.assigned: set[int] = set()

    # ----------------------------------------------------------------- reading

    def has(self, name: str) -> bool:
        return self.prefix + name in self.tensors

    def take(self, name: str) -> Tensor:
        """The checkpoint tensor ``prefix + name`` (marked as used)."""
        key = self.prefix + name
        if key not in self.tensors:
            raise UnsupportedHFModel(f"{self.source}: missing tensor {key!r}")
        self.used.add(key)
        return self._floating(key)

    def _floating(self, key: str) -> Tensor:
        """Checkpoint tensor ``key``, which must be floating (weights are never cast from an
        integer or bool tensor)."""
        value = self.tensors[key]
        if not value.is_floating_point():
            raise UnsupportedHFModel(
                f"{self.source}: tensor {key!r} is stored as {value.dtype}; a floating-point "
                "weight was expected (refusing to cast it)"
            )
        return value

    def take_optional(self, name: str) -> Tensor | None:
        return self.take(name) if self.has(name) else None

    def skip(self, key: str) -> None:
        """Mark a full checkpoint key as used on purpose (e.g. a tied head stored twice)."""
        self.used.add(key)

    # ----------------------------------------------------------------- writing

    def set(self, param: Tensor | None, value: Tensor | None, name: str) -> None:
        """Copy ``value`` into ``param`` (shapes must agree; the dtype becomes the model's)."""
        if param is None and value is None:
            return
        if param is None or value is None:
            have = "has" if param is not None else "has no"
            raise UnsupportedHFModel(
                f"{self.source}: {name}: the anyformer model {have} this parameter but the "
                "checkpoint " + ("does not" if value is None else "does")
            )
        if value.is_floating_point() != param.is_floating_point():
            raise UnsupportedHFModel(
                f"{self.source}: {name} is stored as {value.dtype}, the anyformer model holds "
                f"{param.dtype} (refusing to cast it)"
            )
        if tuple(param.shape) != tuple(value.shape):
            raise UnsupportedHFModel(
                f"{self.source}: {name} has shape {tuple(value.shape)}, the anyformer model "
                f"expects {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(value)
        self.assigned.add(id(param))

    def set_linear(self, linear: nn.Module, weight: Tensor, bias: Tensor | None, name: str) -> None:
        """An nn.Linear from a (out, in) weight and an optional bias."""
        self.set(linear.get_parameter("weight"), weight, f"{name}.weight")
        self.set(optional_tensor(linear, "bias"), bias, f"{name}.bias")

    def set_norm(self, norm: nn.Module, weight: Tensor, bias: Tensor | None, name: str) -> None:
        """A LayerNorm / RMSNorm gain (and bias)."""
        gain = optional_tensor(norm, "weight")
        if gain is None:
            gain = optional_tensor(norm, "g")
        self.set(gain, weight, f"{name}.weight")
        self.set(optional_tensor(norm, "bias"), bias, f"{name}.bias")

    def set_attention(
        self,
        attn: nn.Module,
        q: tuple[Tensor, Tensor | None],
        k: tuple[Tensor, Tensor | None],
        v: tuple[Tensor, Tensor | None],
        out: tuple[Tensor, Tensor | None],
        name: str,
    ) -> None:
        """An anyformer Attention from separate (weight, bias) pairs of q, k, v and out."""
        qkv = attn.get_submodule("qkv")
        parts = (q, k, v)
        biases = [b for _, b in parts if b is not None]
        if biases and len(biases) != len(parts):
            raise UnsupportedHFModel(
                f"{self.source}: {name}: biases on some of q/k/v only are not supported"
            )
        bias = torch.cat(biases) if biases else None
        if hasattr(qkv, "to_qkv"):
            fused = torch.cat([w for w, _ in parts])
            self.set_linear(qkv.get_submodule("to_qkv"), fused, bias, f"{name}.qkv")
        else:
            self.set_linear(qkv.get_submodule("to_q"), q[0], q[1], f"{name}.q")
            kv_bias = torch.cat(biases[1:]) if biases else None
            kv = torch.cat([k[0], v[0]])
            self.set_linear(qkv.get_submodule("to_kv"), kv, kv_bias, f"{name}.kv")
        self.set_linear(attn.get_submodule("to_out"), out[0], out[1], f"{name}.out")

    def set_feedforward(
        self,
        ff: nn.Module,
        up: tuple[Tensor, Tensor | None],
        down: tuple[Tensor, Tensor | None],
        name: str,
        gate: tuple[Tensor, Tensor | None] | None = None,
    ) -> None:
        """An anyformer FeedForward; with ``gate``, a GLU: act(gate) * up."""
        proj_in = ff.get_submodule("proj_in")
        if gate is None:
            self.set_linear(proj_in, up[0], up[1], f"{name}.up")
        else:
            # anyformer's GLU splits its projection into (value, gate)
            up_bias, gate_bias = up[1], gate[1]
            if (up_bias is None) != (gate_bias is None):
                raise UnsupportedHFModel(
                    f"{self.source}: {name}: a bias on one of the up and gate projections only "
                    "is not supported"
                )
            bias = None if up_bias is None or gate_bias is None else torch.cat([up_bias, gate_bias])
            self.set_linear(proj_in, torch.cat([up[0], gate[0]]), bias, f"{name}.gate_up")
        self.set_linear(ff.get_submodule("proj_out"), down[0], down[1], f"{name}.down")

    def set_abs_positions(self, pos_emb: nn.Module, table: Tensor, name: str) -> None:
        """A learned position table: anyformer scales its lookup by pos_emb.scale (dim**-0.5),
        Hugging Face adds it unscaled, so the table is stored divided by that scale."""
        scale = float(getattr(pos_emb, "scale", 1.0))
        # divided in float64, rounded once into the model's dtype
        self.set(pos_emb.get_parameter("emb.weight"), table.double().div(scale), name)

    def set_head(self, model: nn.Module, tied: bool, key: str = "lm_head.weight") -> None:
        """The LM head (``key`` has no base-model prefix): tied heads reuse the token embedding,
        and a copy of it in the checkpoint is skipped."""
        if tied:
            self.skip(key)
            return
        if key not in self.tensors:
            raise UnsupportedHFModel(f"{self.source}: missing tensor {key!r} (untied LM head)")
        self.used.add(key)
        self.set(model.get_parameter("to_logits.weight"), self._floating(key), key)

    # ----------------------------------------------------------------- checks

    def finish(self) -> None:
        """Raise on unused checkpoint tensors and on model parameters left unset."""
        unused = [
            k
            for k in self.tensors
            if k not in self.used and not any(fnmatch.fnmatchcase(k, p) for p in self.ignore)
        ]
        if unused:
            more = f" (and {len(unused) - 5} more)" if len(unused) > 5 else ""
            raise UnsupportedHFModel(
                f"{self.source}: the converter does not know the checkpoint tensors "
                f"{unused[:5]}{more}: a feature of this checkpoint is not supported"
            )
        unset = [n for n, p in self.model.named_parameters() if id(p) not in self.assigned]
        if unset:
            raise UnsupportedHFModel(
                f"{self.source}: no checkpoint tensor for the anyformer parameters {unset[:5]}"
            )


def check_divisible(config: HFConfig, width_key: str, heads_key: str) -> int:
    """The head width ``width // heads``, raising when the heads do not divide the width."""
    width, heads = config.get(width_key), config.get(heads_key)
    if width % heads:
        raise config.unsupported(heads_key, heads, f"it does not divide {width_key}={width}")
    return width // heads


def tied_head(model: nn.Module) -> bool:
    """Whether ``model``'s output head reuses its token embedding (``config.tie_embedding``)."""
    tied = getattr(getattr(model, "config", None), "tie_embedding", None)
    if not isinstance(tied, bool):
        raise TypeError(
            f"expected a TransformerWrapper (with config.tie_embedding), got {type(model).__name__}"
        )
    return tied


def optional_tensor(module: nn.Module, name: str) -> Tensor | None:
    """``module``'s tensor attribute ``name`` (a parameter such as a bias), None where it has
    none."""
    value = getattr(module, name, None)
    return value if isinstance(value, Tensor) else None


def layer_pairs(stack: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """The (self-attention block, feedforward block) of each layer of an anyformer stack."""
    blocks = list(stack.get_submodule("layers").children())
    types = "".join(str(getattr(b, "layer_type", "?")) for b in blocks)
    if types != "af" * (len(blocks) // 2):
        raise UnsupportedHFModel(f"expected a stack of attention + feedforward layers, got {types}")
    return [(blocks[i], blocks[i + 1]) for i in range(0, len(blocks), 2)]
