"""x-transformers checkpoints <-> anyformer models, exactly (every tensor used, or an error).

Build the anyformer model with the keywords the x-transformers model was built with, then
``load_x_transformers_state_dict(model, state_dict)``; ``to_x_transformers_state_dict(model)``
goes the other way. The layout is the one of x-transformers 1.28.x (2.x where its module layout
is the same: 2.x releases store LayerNorm gains as ``gamma``, by default with a unit offset, and
such checkpoints are refused with that reason). Where the layouts differ, a rule below says how;
everything else keeps its name.

A rule is a function of one anyformer module that returns specs, all relative to that module:

- ``Rename(ours, theirs)``: a child module or tensor stored under another name ("" = merged into
  the parent, as the attention projections are).
- ``Fused(ours, theirs, sizes)``: one of our tensors is several of theirs concatenated on dim 0
  (the fused q/k/v projection).
- ``Derived(ours, source)``: a tensor x-transformers does not store because it is tied to another
  one (the output head with ``tie_embedding=True``).
- ``Extra(theirs, template, fill, accept, reason)``: a tensor x-transformers stores and anyformer
  has no use for. ``fill``: ``to_x_transformers_state_dict`` writes zeros of the template's
  shape (so x-transformers computes what anyformer computes); ``accept``: ``"any"`` (unused by
  x-transformers too), ``"zeros"`` (exact only when all zero) or ``"never"`` (it changes the
  function: loading fails with ``reason``). An absent extra is always fine.

New modules or options add a rule to ``RULES`` (or a spec to an existing rule).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.attention import Attention, FusedQKV, SplitQKV
from ..nn.feedforward import FeedForward
from ..nn.norms import RMSNorm
from ..nn.positions import DynamicPositionBias, RelativePositionBias
from ..nn.talking_heads import TalkingHeads
from ..stack.blocks import Block
from ..stack.layers import AttentionLayers
from ..wrappers.transformer import TransformerWrapper
from ..wrappers.xtransformer import XTransformer

__all__ = [
    "RULES",
    "Derived",
    "Extra",
    "Fused",
    "Mapped",
    "Rename",
    "load_x_transformers_state_dict",
    "to_x_transformers_state_dict",
]


@dataclass(frozen=True)
class Rename:
    """Our child module or tensor ``ours`` is x-transformers' ``theirs`` ("" = the parent)."""

    ours: str
    theirs: str


@dataclass(frozen=True)
class Fused:
    """Our tensor ``ours`` is their tensors ``theirs`` concatenated on dim 0 (``sizes`` rows each),
    after ``to_theirs`` (and ``to_ours`` on the way back) if given (a reordering of heads)."""

    ours: str
    theirs: tuple[str, ...]
    sizes: tuple[int, ...]
    to_theirs: Callable[[Tensor], Tensor] | None = None
    to_ours: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if (self.to_theirs is None) != (self.to_ours is None):
            raise ValueError(f"internal: Fused({self.ours!r}) needs both maps or neither")


@dataclass(frozen=True)
class Mapped:
    """Our tensor ``ours`` is their tensor ``theirs`` in another layout (head order, shape):
    ``to_theirs(ours)`` gives theirs, ``to_ours(theirs)`` ours."""

    ours: str
    theirs: str
    to_theirs: Callable[[Tensor], Tensor]
    to_ours: Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Derived:
    """Our tensor ``ours`` is tied to our tensor ``source``; x-transformers does not store it."""

    ours: str
    source: str


@dataclass(frozen=True)
class Extra:
    """A tensor only x-transformers has (see the module docstring for fill / accept)."""

    theirs: str
    template: Tensor
    fill: bool
    accept: str  # "any" | "zeros" | "never" | "equal" (exact only when it equals the template)
    reason: str


Spec = Rename | Fused | Mapped | Derived | Extra


# --- the rules, one per anyformer module type whose layout differs --------------------------


def _block(m: Block) -> list[Spec]:
    # x-transformers: layers.i = ModuleList([ModuleList([pre, post_branch, post_main]), branch, residual])
    return [
        Rename("pre_norm", "0.0"),
        Rename("post_branch_norm", "0.1"),
        Rename("post_norm", "0.2"),
        # token shift: x-transformers wraps the branch in ShiftTokens (its child "fn")
        Rename("branch", "1.fn" if m.token_shift is not None else "1"),
        Rename("residual", "2"),
    ]


def _rms_norm(m: RMSNorm) -> list[Spec]:
    return [Rename("weight", "g")]  # RMSNorm / ScaleNorm gains are "g" in x-transformers


def _gqa_order(heads: int, kv_heads: int) -> Tensor | None:
    """Our query head o is x-transformers' query head order[o]; None when the orders agree.

    We pair query head o with key/value head o // (heads // kv_heads) (what SDPA's grouped-query
    mode and Hugging Face do); x-transformers 1.28.2 pairs its query head t with t % kv_heads.
    """
    if kv_heads in (1, heads):
        return None
    group = heads // kv_heads
    return torch.tensor([(o % group) * kv_heads + o // group for o in range(heads)])


def _reorder(order: Tensor, dim: int, size: int) -> Callable[[Tensor], Tensor]:
    """Reorder the first len(order) blocks of `size` entries along `dim` (block o <- order[o])."""

    def apply(t: Tensor) -> Tensor:
        index = (order[:, None] * size + torch.arange(size)).flatten().to(t.device)
        head = t.narrow(dim, 0, index.numel()).index_select(dim, index)
        rest = t.narrow(dim, index.numel(), t.shape[dim] - index.numel())
        return torch.cat((head, rest), dim=dim)

    return apply


def _head_maps(
    order: Tensor | None, dim: int, size: int
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(to_theirs, to_ours) for a tensor with one block of `size` per query head along `dim`."""
    if order is None:
        return (lambda t: t), (lambda t: t)
    return _reorder(torch.argsort(order), dim, size), _reorder(order, dim, size)


def _talking_heads_maps(
    order: Tensor | None, heads: int
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """Our (h, h) head mix <-> x-transformers' 1x1 Conv2d weight (h, h, 1, 1)."""
    rows_t, rows_o = _head_maps(order, 0, 1)
    cols_t, cols_o = _head_maps(order, 1, 1)
    return (
        lambda w: cols_t(rows_t(w)).reshape(heads, heads, 1, 1),
        lambda w: cols_o(rows_o(w.reshape(heads, heads))),
    )


def _attention(m: Attention) -> list[Spec]:
    # to_q / to_k / to_v, the qk-norm scales, mem_k / mem_v, to_r, to_v_head_gate and
    # head_scale_params sit directly in x-transformers' Attention
    specs: list[Spec] = [
        Rename("qkv", ""),
        Rename("qk_norm", ""),
        Rename("prepended", ""),
        Rename("head_ops", ""),
    ]
    order = _gqa_order(m.heads, m.kv_heads)
    per_head = []  # (ours, theirs, dim, block size) of tensors with one block per query head
    if "head_scale" in m.head_ops:
        per_head.append(("head_ops.head_scale.head_scale_params", "head_scale_params", 1, 1))
    if order is not None:
        if "to_v_head_gate" in m.head_ops:
            for name in ("weight", "bias"):
                per_head.append((f"head_ops.to_v_head_gate.{name}", f"to_v_head_gate.{name}", 0, 1))
        if m.to_v_gate is not None:
            for name in ("weight", "bias"):
                per_head.append((f"to_v_gate.{name}", f"to_v_gate.{name}", 0, m.value_dim))
        out = "to_out.0.weight" if isinstance(m.to_out, nn.Sequential) else "to_out.weight"
        per_head.append((out, out, 1, m.value_dim))
        if m.qk_norm is not None and m.qk_norm.qk_norm_q_scale is not None:
            for name in ("qk_norm_q_scale", "qk_norm_k_scale"):
                per_head.append((f"qk_norm.{name}", name, 0, 1))
    for ours, theirs, dim, size in per_head:
        specs.append(Mapped(ours, theirs, *_head_maps(order, dim, size)))
    for hooks, theirs in (("logit_hooks", "pre"), ("prob_hooks", "post")):
        for i, hook in enumerate(getattr(m.attend, hooks)):
            if isinstance(hook, TalkingHeads):
                name = f"attend.{theirs}_softmax_talking_heads.weight"
                maps = _talking_heads_maps(order, m.heads)
                specs.append(Mapped(f"attend.{hooks}.{i}.weight", name, *maps))
    return specs


def _sizes(m: FusedQKV | SplitQKV) -> tuple[int, ...]:
    """(q, k[, v]) output widths; older modules had one `inner` width for all three."""
    if hasattr(m, "sizes"):
        return tuple(m.sizes)
    inner: int = getattr(m, "inner")  # noqa: B009 - older modules: an attribute they no longer declare
    return (inner,) * 3


def _qkv_specs(
    ours: str,
    theirs: tuple[str, ...],
    sizes: tuple[int, ...],
    linear: nn.Linear,
    maps: tuple = (),
) -> list[Spec]:
    """Our fused projection `ours` is x-transformers' `theirs` (weight, and bias if any);
    ``maps``: (to_theirs, to_ours) reordering the query heads (grouped-query attention)."""
    specs: list[Spec] = [
        Fused(f"{ours}.weight", tuple(f"{t}.weight" for t in theirs), sizes, *maps)
    ]
    if linear.bias is not None:
        specs.append(Fused(f"{ours}.bias", tuple(f"{t}.bias" for t in theirs), sizes, *maps))
    return specs


def _query_maps(m: FusedQKV | SplitQKV) -> tuple:
    """Reorder the query rows of a projection whose queries are grouped over fewer kv heads."""
    heads, kv_heads = getattr(m, "heads", 1), getattr(m, "kv_heads", 1)
    order = _gqa_order(heads, kv_heads)
    return () if order is None else _head_maps(order, 0, m.sizes[0] // heads)


def _fused_qkv(m: FusedQKV) -> list[Spec]:
    # sizes: (q, k, v), or (q, k) when the values are the keys (shared_kv: no to_v)
    sizes = _sizes(m)
    theirs = ("to_q", "to_k", "to_v")[: len(sizes)]
    return _qkv_specs("to_qkv", theirs, sizes, m.to_qkv, _query_maps(m))


def _split_qkv(m: SplitQKV) -> list[Spec]:
    sizes = _sizes(m)[1:]
    specs = _qkv_specs("to_kv", ("to_k", "to_v")[: len(sizes)], sizes, m.to_kv)
    maps = _query_maps(m)
    if maps:
        specs.append(Mapped("to_q.weight", "to_q.weight", *maps))
        if m.to_q.bias is not None:
            specs.append(Mapped("to_q.bias", "to_q.bias", *maps))
    return specs


def _feedforward(m: FeedForward) -> list[Spec]:
    # x-transformers: ff = Sequential(proj_in [+ act], [LayerNorm], Dropout, Linear), Nones dropped
    c = m.config
    specs: list[Spec] = [
        Rename("proj_out", f"ff.{3 if c.post_act_ln else 2}"),
        Rename("post_act_norm", "ff.1"),
    ]
    if not c.glu:
        return [*specs, Rename("proj_in", "ff.0.0")]
    specs += [
        Rename("proj_in", "ff.0.proj"),
        Rename("act", "ff.0"),
    ]  # act.mult_bias -> ff.0.mult_bias
    if c.no_bias:
        weight = m.proj_in.weight
        specs.append(
            Extra(
                "ff.0.proj.bias",
                torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device),
                fill=True,
                accept="zeros",
                reason="x-transformers keeps the GLU projection bias with ff_no_bias=True (a "
                "defect that anyformer fixes): only an all-zero bias converts exactly; build the "
                "anyformer model with ff_no_bias=False to keep every bias",
            )
        )
    return specs


def _positions(m: AttentionLayers) -> list[Spec]:
    # x-transformers: the bias module is `rel_pos`; its rotary frequencies (and xPos decay rates)
    # are persistent buffers, which anyformer recomputes from the keywords instead
    specs: list[Spec] = [Rename("attn_bias", "rel_pos")]
    c, bias = m.config, m.attn_bias
    order = _gqa_order(c.heads, c.attention.kv_heads_for(c.heads))
    if order is not None and isinstance(bias, RelativePositionBias):  # one column per head
        name = "relative_attention_bias.weight"
        specs.append(Mapped(f"attn_bias.{name}", f"rel_pos.{name}", *_head_maps(order, 1, 1)))
    elif order is not None and isinstance(bias, DynamicPositionBias):  # one output per head
        last = f"mlp.{len(bias.mlp) - 1}"
        for t in ("weight", "bias"):
            maps = _head_maps(order, 0, 1)
            specs.append(Mapped(f"attn_bias.{last}.{t}", f"rel_pos.{last}.{t}", *maps))
    rotary = m.rotary
    if rotary is None:
        return specs
    reason = (
        "the rotary {} differ from those of this model's keywords (rotary_emb_dim, rotary_theta, "
        "rotary_base_rescale_factor): build the anyformer model with the checkpoint's options"
    )
    specs.append(
        Extra(
            "rotary_pos_emb.inv_freq",
            rotary.inv_freq.detach().clone(),
            fill=True,
            accept="equal",
            reason=reason.format("frequencies"),
        )
    )
    if rotary.xpos_zeta is not None:
        specs.append(
            Extra(
                "rotary_pos_emb.scale",
                rotary.xpos_zeta.detach().clone(),
                fill=True,
                accept="equal",
                reason=reason.format("xPos decay rates"),
            )
        )
    return specs


def _attention_layers(m: AttentionLayers) -> list[Spec]:
    c = m.config
    specs = _positions(m)
    if not (c.pre_norm and not c.pre_norm_has_final_norm):
        return specs
    weight = next(m.parameters())
    kind = c.norm.kind
    if kind == "simple_rmsnorm":
        return specs  # x-transformers' final SimpleRMSNorm has no tensor
    size, name = {"layernorm": (c.dim, "weight"), "scalenorm": (1, "g")}.get(kind, (c.dim, "g"))
    gain = torch.ones(size, dtype=weight.dtype, device=weight.device)
    reason = (
        "x-transformers 1.28.2 (and 2.0) ignores pre_norm_has_final_norm=False and builds "
        "and applies this final norm: build the anyformer model with pre_norm_has_final_norm=True "
        "to load this checkpoint exactly"
    )
    return [*specs, Extra(f"final_norm.{name}", gain, fill=False, accept="never", reason=reason)]


def _transformer_wrapper(m: TransformerWrapper) -> list[Spec]:
    if m.config.tie_embedding:
        return [Derived("to_logits.weight", "token_emb.emb.weight")]  # x-transformers: a lambda
    return []


def _xtransformer(m: XTransformer) -> list[Spec]:
    weight = m.encoder.token_emb.emb.weight
    return [
        Extra(
            "encoder.to_logits.weight",
            torch.zeros(
                m.encoder.num_tokens,
                m.encoder.attn_layers.dim,
                dtype=weight.dtype,
                device=weight.device,
            ),
            fill=True,
            accept="any",
            reason="the encoder output head x-transformers builds and never uses",
        )
    ]


#: anyformer module type -> rule; the most specific type in a module's MRO wins.
#: (A rule takes its own module type: typed Any here, the MRO lookup in ``_rule`` ensures it.)
RULES: dict[type, Callable[[Any], list[Spec]]] = {
    Block: _block,
    Attention: _attention,
    FusedQKV: _fused_qkv,
    SplitQKV: _split_qkv,
    FeedForward: _feedforward,
    RMSNorm: _rms_norm,
    AttentionLayers: _attention_layers,
    TransformerWrapper: _transformer_wrapper,
    XTransformer: _xtransformer,
}


# --- the engine: rules -> links between full keys -------------------------------------------


@dataclass(frozen=True)
class _Link:
    ours: str | None  # None: an Extra
    theirs: tuple[str, ...]  # () : a Derived tensor
    sizes: tuple[int, ...] | None = None  # Fused: rows per piece
    maps: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] | None = None  # Mapped
    source: str | None = None  # Derived
    extra: Extra | None = None

    @property
    def key(self) -> str:
        """``ours``, for every kind of link but an Extra (which has no tensor of ours)."""
        if self.ours is None:
            raise ValueError(f"internal: the Extra link {self.theirs} has no tensor of ours")
        return self.ours


def _join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


def _rule(module: nn.Module) -> Callable[[nn.Module], list[Spec]] | None:
    for cls in type(module).__mro__:
        if cls in RULES:
            return RULES[cls]
    return None


def _own_tensors(module: nn.Module) -> list[str]:
    """Names of the tensors this module itself puts in its state_dict."""
    names = [n for n, p in module._parameters.items() if p is not None]
    names += [
        n
        for n, b in module._buffers.items()
        if b is not None and n not in module._non_persistent_buffers_set
    ]
    return names


def _links(model: nn.Module) -> list[_Link]:
    links: list[_Link] = []
    claimed: set[str] = set()

    def visit(module: nn.Module, ours: str, theirs: str) -> None:
        rule = _rule(module)
        renames: dict[str, str] = {}
        for spec in rule(module) if rule is not None else []:
            if isinstance(spec, Rename):
                renames[spec.ours] = spec.theirs
            elif isinstance(spec, Fused):
                key = _join(ours, spec.ours)
                claimed.add(key)
                pieces = tuple(_join(theirs, t) for t in spec.theirs)
                maps = None
                if spec.to_theirs is not None and spec.to_ours is not None:
                    maps = (spec.to_theirs, spec.to_ours)
                links.append(_Link(key, pieces, sizes=spec.sizes, maps=maps))
            elif isinstance(spec, Mapped):
                key = _join(ours, spec.ours)
                claimed.add(key)
                maps = (spec.to_theirs, spec.to_ours)
                links.append(_Link(key, (_join(theirs, spec.theirs),), maps=maps))
            elif isinstance(spec, Derived):
                key = _join(ours, spec.ours)
                claimed.add(key)
                links.append(_Link(key, (), source=_join(ours, spec.source)))
            else:
                links.append(_Link(None, (_join(theirs, spec.theirs),), extra=spec))
        for name in _own_tensors(module):
            key = _join(ours, name)
            if key not in claimed:
                links.append(_Link(key, (_join(theirs, renames.get(name, name)),)))
        for name, child in module.named_children():
            visit(child, _join(ours, name), _join(theirs, renames.get(name, name)))

    visit(model, "", "")
    own = [link.ours for link in links if link.ours is not None]
    expected = list(model.state_dict().keys())
    if sorted(own) != sorted(expected):  # a rule names a tensor the model does not have
        raise RuntimeError(
            f"x-transformers conversion rules do not cover {type(model).__name__} exactly: "
            f"rules give {sorted(set(own) - set(expected))}, "
            f"the model has {sorted(set(expected) - set(own))} unmapped"
        )
    return links


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_model(fn: str, model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be an anyformer nn.Module, got {type(model).__name__}")


# --- public API --------------------------------------------------------------------------


def to_x_transformers_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state_dict of the x-transformers model built with the same keywords as ``model``.

    Fused projections are split (copies); a head tied to the token embedding is left out, as
    x-transformers does; tensors that only x-transformers has are zeros where that is exact
    (the GLU bias with ``ff_no_bias=True``, the unused XTransformer encoder head). With
    ``pre_norm=True, pre_norm_has_final_norm=False`` no final norm is written (there is none):
    1.28.2, which always builds one, loads the result only with ``strict=False``.
    """
    _check_model("to_x_transformers_state_dict", model)
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    for link in _links(model):
        if link.extra is not None:
            if link.extra.fill:
                out[link.theirs[0]] = link.extra.template.clone()
            continue
        tensor = ours[link.key] if link.maps is None else link.maps[0](ours[link.key])
        if link.sizes is not None:
            for key, piece in zip(link.theirs, tensor.split(link.sizes, dim=0)):
                out[key] = piece.clone()
        elif link.theirs:
            out[link.theirs[0]] = tensor
    return out


def load_x_transformers_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a state_dict saved from x-transformers into ``model`` (built with the same keywords).

    Strict: every tensor of ``state_dict`` must be used and every tensor of ``model`` filled,
    with the same shapes and dtypes (nothing is cast); otherwise a ValueError lists the
    unmatched keys and the shapes and dtypes that differ, and ``model`` is left unchanged. The
    encoder output head that x-transformers' XTransformer builds but never uses
    (``encoder.to_logits.weight``) is accepted and dropped.
    """
    fn = "load_x_transformers_state_dict"
    _check_model(fn, model)
    _check_state_dict(fn, state_dict)
    match = _Match(model.state_dict(), dict(state_dict))
    derived: list[tuple[str, str]] = []  # (ours, the tensor of ours it is tied to)
    for link in _links(model):
        if link.extra is not None:
            match.extra(link.theirs[0], link.extra)
        elif link.source is not None:
            derived.append((link.key, link.source))
        else:
            match.take(link)
    match.raise_if_unmatched(fn, type(model).__name__)
    for key, source in derived:
        match.new[key] = match.new[source]
    _check_tied(fn, match.expected, match.new)
    model.load_state_dict(match.new, strict=True)


def _check_state_dict(fn: str, state_dict: Mapping[str, Tensor]) -> None:
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{fn}: state_dict must be a mapping of str to Tensor, got {type(state_dict).__name__}"
        )
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise TypeError(
                f"{fn}: state_dict must map str to Tensor, got {key!r}: {type(value).__name__}"
            )


_GAMMA_NOTE = (
    "  (keys ending in '.gamma' are LayerNorm gains as x-transformers 2.x stores them, by default "
    "with a unit offset (norm_add_unit_offset=True): only the 1.28.x layout is supported)"
)


class _Match:
    """Consumes the checkpoint's tensors link by link and records what does not fit."""

    def __init__(self, expected: Mapping[str, Tensor], remaining: dict[str, Tensor]) -> None:
        self.expected = expected
        self.remaining = remaining
        self.new: dict[str, Tensor] = {}
        self.missing: list[str] = []
        self.shapes: list[str] = []
        self.dtypes: list[str] = []
        self.rejected: list[str] = []

    def _pop(
        self, key: str, shape: tuple[int, ...], dtype: torch.dtype | None = None
    ) -> Tensor | None:
        if key not in self.remaining:
            self.missing.append(f"{key}: {shape}")
            return None
        value = self.remaining.pop(key)
        if _shape(value) != shape:
            self.shapes.append(f"{key}: {_shape(value)} in state_dict, {shape} expected")
            return None
        if dtype is not None and value.dtype != dtype:
            self.dtypes.append(f"{key}: {value.dtype} in state_dict, the model holds {dtype}")
            return None
        return value

    def take(self, link: _Link) -> None:
        expected = self.expected[link.key]
        target = _shape(expected if link.maps is None else link.maps[0](expected))
        if link.sizes is None:
            pieces = [self._pop(link.theirs[0], target, expected.dtype)]
        else:
            shapes = [(rows, *target[1:]) for rows in link.sizes]
            pieces = [
                self._pop(key, shape, expected.dtype) for key, shape in zip(link.theirs, shapes)
            ]
        found = [p for p in pieces if p is not None]
        if len(found) == len(pieces):
            value = found[0] if len(found) == 1 else torch.cat(found, dim=0)
            self.new[link.key] = value if link.maps is None else link.maps[1](value)

    def extra(self, key: str, extra: Extra) -> None:
        if key not in self.remaining:
            return  # absent is fine: x-transformers versions without the tensor
        value = self._pop(key, _shape(extra.template))
        if value is None:
            return
        differs = extra.accept == "equal" and not torch.allclose(value, extra.template, rtol=1e-6)
        if differs or extra.accept == "never" or (extra.accept == "zeros" and bool(value.any())):
            self.rejected.append(f"{key}: {extra.reason}")

    def raise_if_unmatched(self, fn: str, owner: str) -> None:
        problems = [
            (f"keys of state_dict this {owner} has no place for", self._unused()),
            ("keys this model needs that state_dict lacks", self.missing),
            ("shapes that differ", self.shapes),
            (
                "dtypes that differ (no silent cast: convert the model or the tensors first)",
                self.dtypes,
            ),
            ("tensors anyformer cannot represent exactly", self.rejected),
        ]
        if not any(items for _, items in problems):
            return
        lines = [f"{fn}: the state_dict does not match this {owner}:"]
        for title, items in problems:
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        if any(key.endswith(".gamma") for key in self.remaining):
            lines.append(_GAMMA_NOTE)
        raise ValueError("\n".join(lines))

    def _unused(self) -> list[str]:
        return [f"{key}: {_shape(value)}" for key, value in self.remaining.items()]


def _check_tied(fn: str, expected: Mapping[str, Tensor], new: Mapping[str, Tensor]) -> None:
    """Keys that share one tensor in the model must receive equal values."""
    groups: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for key, tensor in expected.items():
        if tensor.numel():
            groups.setdefault((tensor.data_ptr(), _shape(tensor)), []).append(key)
    for keys in groups.values():
        first = new[keys[0]]
        differ = [k for k in keys[1:] if not torch.equal(new[k], first)]
        if differ:
            raise ValueError(
                f"{fn}: {[keys[0], *differ]} are one tied tensor in this model but hold "
                "different values in state_dict (build the model with the tying the checkpoint "
                "was trained with)"
            )
