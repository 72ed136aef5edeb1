"""x-transformers checkpoints <-> anyformer models, exactly (every tensor used, or an error).

Build the anyformer model with the keywords the x-transformers model was built with, then
``load_x_transformers_state_dict(model, state_dict)``; ``to_x_transformers_state_dict(model)``
goes the other way. ``version=1`` (the default) is the layout of x-transformers 1.28.x;
``version=2`` the one of 2.x releases (tested against 2.31.10): their LayerNorm gains are
``gamma`` and, with 2.x's default ``norm_add_unit_offset=True``, every norm gain of the stack
(LayerNorm, RMSNorm, ScaleNorm, and LayerScale / DynamicTanh) is stored minus its unit offset
(weight = stored + 1); pass ``norm_add_unit_offset=False`` for a 2.x model built with it off. The
layout cannot be told from the keys alone (an RMSNorm gain is ``g`` in both), so it is an
argument. Where the layouts differ, a rule below says how; everything else keeps its name. A rule
reads the layout being converted with ``current_layout()``.

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

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.attention import Attention, FusedQKV, SplitQKV
from ..nn.dyt import DynamicTanh
from ..nn.feedforward import FeedForward
from ..nn.latent_attention import LatentQKV
from ..nn.layer_scale import LayerScale
from ..nn.norms import LayerNorm, RMSNorm
from ..nn.positions import DynamicPositionBias, RelativePositionBias
from ..nn.talking_heads import TalkingHeads
from ..nn.value_residual import ValueResidualMix
from ..stack.blocks import Block
from ..stack.layers import AttentionLayers
from ..wrappers.transformer import TransformerWrapper
from ..wrappers.xtransformer import XTransformer
from .x_transformers_support import check_x_transformers_support

__all__ = [
    "RULES",
    "Derived",
    "Extra",
    "Fused",
    "Layout",
    "Mapped",
    "Rename",
    "current_layout",
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


@dataclass(frozen=True)
class Layout:
    """The x-transformers release whose layout is converted: ``version`` 1 (1.28.x) or 2 (2.x);
    ``unit_offset``: 2.x's ``norm_add_unit_offset`` (stack norm gains stored minus 1)."""

    version: int = 1
    unit_offset: bool = False
    #: 2.x rotates interleaved pairs (2i, 2i+1) of a head's first ``dim`` channels, 1.28.x and
    #: anyformer the halves (i, i + dim/2): id(q/k projection module) -> rotary dim, whose rows
    #: are permuted (the attention logits are unchanged: q and k get the same permutation)
    rotary: Mapping[int, int] = field(default_factory=dict)

    @property
    def offset(self) -> float:
        """What x-transformers adds to a stored stack-norm gain (0 or 1)."""
        return 1.0 if self.version == 2 and self.unit_offset else 0.0


_LAYOUT: ContextVar[Layout | None] = ContextVar("x_transformers_layout", default=None)


def current_layout() -> Layout:
    """The layout of the conversion in progress (rules read it; 1.28.x outside a conversion)."""
    return _LAYOUT.get() or Layout()


@contextmanager
def _layout(layout: Layout) -> Iterator[None]:
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def _shifted(ours: str, theirs: str, offset: float) -> Mapped:
    """Our tensor ``ours`` (a path below the rule's module) is stored as ``theirs`` minus
    ``offset`` (2.x's unit offset; 0: the same values)."""
    if not offset:
        return Mapped(ours, theirs, lambda t: t, lambda t: t)
    return Mapped(ours, theirs, lambda t: t - offset, lambda t: t + offset)


def _norm_gain_specs(slot: str, norm: nn.Module, theirs: str) -> list[Spec]:
    """The gain of a stack norm in slot ``slot`` (x-transformers' ``theirs``), with 2.x's unit
    offset where the layout has one; a norm without a gain or of another type: nothing."""
    layout = current_layout()
    if isinstance(norm, DynamicTanh):  # 2.x stores alpha minus its initial value
        alpha_offset = norm.init_alpha if layout.offset else 0.0
        return [
            _shifted(f"{slot}.alpha", f"{theirs}.pre_tanh_scale", alpha_offset),
            _shifted(f"{slot}.weight", f"{theirs}.gamma", layout.offset),
            _shifted(f"{slot}.bias", f"{theirs}.beta", 0.0),
        ]
    if layout.version != 2 or not isinstance(norm, (LayerNorm, RMSNorm)):
        return []
    if norm.weight is None:
        return []
    name = "gamma" if isinstance(norm, LayerNorm) else "g"
    return [_shifted(f"{slot}.weight", f"{theirs}.{name}", layout.offset)]


# --- the rules, one per anyformer module type whose layout differs --------------------------


def _block(m: Block) -> list[Spec]:
    # x-transformers: layers.i = ModuleList([ModuleList([pre, post_branch, post_main]), branch, residual])
    norms = [
        spec
        for ours, theirs in (("pre_norm", "0.0"), ("post_branch_norm", "0.1"), ("post_norm", "0.2"))
        for spec in _norm_gain_specs(ours, getattr(m, ours), theirs)
    ]
    # x-transformers wraps the branch in ShiftTokens (token shift), then in LayerScale /
    # AdaptiveLayerScale (use_layerscale / use_adaptive_layerscale): each has the child "fn"
    scale = m.branch_scale
    branch = "1.fn" if m.token_shift is not None else "1"
    specs: list[Spec] = []
    if scale is not None:
        branch = branch.replace("1", "1.fn", 1)
        specs.append(Rename("branch_scale", "1"))
        if isinstance(scale, LayerScale):
            specs.append(_shifted("branch_scale.gamma", "1.gamma", current_layout().offset))
    return [
        *norms,
        *specs,
        Rename("pre_norm", "0.0"),
        Rename("post_branch_norm", "0.1"),
        Rename("post_norm", "0.2"),
        Rename("branch", branch),
        Rename("residual", "2"),
    ]


def _value_residual_mix(m: ValueResidualMix) -> list[Spec]:
    return [Rename("proj", "0")]  # x-transformers: Sequential(Linear, Sigmoid, Rearrange)


def _rms_norm(m: RMSNorm) -> list[Spec]:
    return [Rename("weight", "g")]  # RMSNorm / ScaleNorm gains are "g" in x-transformers


def _layer_norm(m: LayerNorm) -> list[Spec]:
    # 1.28.x: torch's LayerNorm ("weight"); 2.x: its own LayerNorm ("gamma"; no offset outside
    # the stack's norms, e.g. ff_post_act_ln, post_emb_norm)
    return [Rename("weight", "gamma")] if current_layout().version == 2 else []


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
    if m.qk_rmsnorm is not None:
        raise ValueError(
            "attn_qk_rmsnorm has no x-transformers checkpoint mapping yet (1.28.x lacks it; 2.x "
            "stores q_rmsnorm/k_rmsnorm gammas in its interleaved rotary layout): save this "
            "model with save_pretrained instead"
        )
    specs: list[Spec] = [
        Rename("qkv", ""),
        Rename("value_residual", "to_value_residual_mix"),
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
    if m.data_alibi is not None:  # 2.x: data_dependent_alibi.to_forget_gates.0 (a Linear)
        # rows: a gate per head, or per row (query, key) x heads x dim_head
        per_row = getattr(m.data_alibi, "dim_head", None)
        maps = _head_maps(order, 0, 1) if per_row is None else _halves_maps(order, per_row)
        for name in ("weight", "bias") if per_row is None else ("weight",):
            ours, theirs = f"data_alibi.to_forget_gates.{name}", f"to_forget_gates.0.{name}"
            specs.append(Mapped(ours, f"data_dependent_alibi.{theirs}", *maps))
    if m.sink is not None:  # x-transformers 2.x keeps the sink logits in its Attend
        specs.append(
            Mapped("sink.head_attn_sink", "attend.head_attn_sink", *_head_maps(order, 0, 1))
        )
    if m.to_output_gate is not None:
        specs.append(
            Mapped("to_output_gate.weight", "to_output_gate.weight", *_gate_maps(m, order))
        )
    for hooks, theirs in (("logit_hooks", "pre"), ("prob_hooks", "post")):
        for i, hook in enumerate(getattr(m.attend, hooks)):
            if isinstance(hook, TalkingHeads):
                name = f"attend.{theirs}_softmax_talking_heads.weight"
                maps = _talking_heads_maps(order, m.heads)
                specs.append(Mapped(f"attend.{hooks}.{i}.weight", name, *maps))
    return specs


def _halves_maps(
    order: Tensor | None, size: int
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """Rows of two halves (queries, keys), each one block of `size` per query head."""
    to_theirs, to_ours = _head_maps(order, 1, size)

    def split(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        return lambda t: f(t.reshape(2, -1, *t.shape[1:])).reshape(t.shape)

    return split(to_theirs), split(to_ours)


def _gate_maps(
    m: Attention, order: Tensor | None
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """The output gate's weight: rows (a gate per head or per feature) and columns (the merged
    head outputs) both in head order."""
    gate = m.to_output_gate
    rows_t, rows_o = _head_maps(order, 0, 1 if gate is not None and gate.headwise else m.value_dim)
    cols_t, cols_o = _head_maps(order, 1, m.value_dim)
    return (lambda w: cols_t(rows_t(w))), (lambda w: cols_o(rows_o(w)))


def _rotary_dims(model: nn.Module) -> dict[int, int]:
    """id(q/k projection) -> rotary dim, for the attention modules that rotate."""
    found: dict[int, int] = {}
    for m in model.modules():
        position = getattr(m, "position", None) if isinstance(m, Attention) else None
        if position is not None and hasattr(position, "inv_freq"):
            found[id(m.qkv)] = int(getattr(position, "dim"))  # noqa: B009 - the rotary width
        if isinstance(m, AttentionLayers) and m.rotary is not None:
            # cross-attention rotates with the stack's rotary when forward gets context_pos
            for block in m.layers:
                if getattr(block, "is_cross", False) and isinstance(block.branch, Attention):
                    found.setdefault(id(block.branch.qkv), m.rotary.dim)
    return found


def _halves_from_pairs(rows: int, dim_head: int, rot: int, offset: int, total: int) -> Tensor:
    """Row index over ``total`` rows: ours[i] = theirs[index[i]] for a block of ``rows`` rows
    starting at ``offset`` whose heads (``dim_head`` rows each) rotate their first ``rot``."""
    index = torch.arange(total)
    within = torch.cat((torch.arange(0, rot, 2), torch.arange(1, rot, 2)))
    for head in range(rows // dim_head):
        start = offset + head * dim_head
        index[start : start + rot] = start + within
    return index


def _rotary_maps(
    m: FusedQKV | SplitQKV, part_rows: tuple[int, ...], rotated: tuple[bool, ...]
) -> tuple | None:
    """(to_theirs, to_ours) on a projection's rows (parts of ``part_rows``, the ``rotated`` ones
    holding rotated heads) under the 2.x layout; None where nothing is rotated."""
    rot = current_layout().rotary.get(id(m))
    if rot is None or not any(rotated):
        return None
    dim_head = m.sizes[1] // max(getattr(m, "kv_heads", 1), 1)
    total, offset = sum(part_rows), 0
    index = torch.arange(total)
    for rows, is_rotated in zip(part_rows, rotated):
        if is_rotated:
            block = _halves_from_pairs(rows, dim_head, rot, offset, total)
            index[offset : offset + rows] = block[offset : offset + rows]
        offset += rows
    inverse = torch.argsort(index)
    return (
        lambda t: t.index_select(0, inverse.to(t.device)),
        lambda t: t.index_select(0, index.to(t.device)),
    )


def _latent_qkv(m: LatentQKV) -> list[Spec]:
    """Multi-head latent attention: 2.x's names; under the 2.x rotary layout (pairs) the rows of
    the rotated heads (the last ``rope_subheads`` query heads, every decoupled key head) are
    reordered to ours (halves)."""
    rot = current_layout().rotary.get(id(m))
    s, d = m.rope_subheads, m.dim_head
    if rot is None or not s:
        return []
    specs: list[Spec] = []
    for name, heads in (("to_q", m.heads), ("to_rotateable_k", s)):
        index = _halves_from_pairs(s * d, d, rot, (heads - s) * d, heads * d)
        maps = _row_maps(torch.argsort(index)), _row_maps(index)
        specs.append(Mapped(f"{name}.weight", f"{name}.weight", *maps))
    return specs


def _row_maps(index: Tensor) -> Callable[[Tensor], Tensor]:
    """t -> its rows in the order ``index``."""
    return lambda t: t.index_select(0, index.to(t.device))


def _compose(first: tuple, then: tuple | None) -> tuple:
    """Maps applying ``first`` and ``then`` (both row maps that commute) in one."""
    if then is None:
        return first
    if not first:
        return then
    return (lambda t: then[0](first[0](t)), lambda t: then[1](first[1](t)))


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
    rotary = _rotary_maps(m, sizes, (True, True, False)[: len(sizes)])
    return _qkv_specs("to_qkv", theirs, sizes, m.to_qkv, _compose(_query_maps(m), rotary))


def _split_qkv(m: SplitQKV) -> list[Spec]:
    sizes = _sizes(m)[1:]
    rotary_kv = _rotary_maps(m, sizes, (True, False)[: len(sizes)])
    specs = _qkv_specs(
        "to_kv", ("to_k", "to_v")[: len(sizes)], sizes, m.to_kv, _compose((), rotary_kv)
    )
    maps = _compose(_query_maps(m), _rotary_maps(m, _sizes(m)[:1], (True,)))
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
    if current_layout().version == 2 and isinstance(bias, DynamicPositionBias):
        first = bias.mlp[0]  # Linear(1, d) [+ LayerNorm] + SiLU: 2.x's own LayerNorm, "gamma"
        for name, child in first.named_children():
            if isinstance(child, nn.LayerNorm) and child.weight is not None:
                ours, theirs = f"attn_bias.mlp.0.{name}.weight", f"rel_pos.mlp.0.{name}.gamma"
                specs.append(Mapped(ours, theirs, *_head_maps(None, 0, 1)))
    rotary = m.rotary
    if rotary is None:
        return specs
    if rotary.scaling is not None:
        raise ValueError(
            f"x-transformers has no rotary_scaling={rotary.scaling.kind!r} (its rotary "
            "frequencies are plain): this model has no x-transformers checkpoint layout (save it "
            "with save_pretrained instead)"
        )
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
    specs = _positions(m) + _norm_gain_specs("final_norm", m.final_norm, "final_norm")
    specs.append(Rename("streams", ""))  # reinject_input_proj, skip_combines, ... as in 2.x
    if not (c.pre_norm and not c.pre_norm_has_final_norm) or current_layout().version == 2:
        return specs  # 2.x builds the final norm only when asked
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
    LatentQKV: _latent_qkv,
    FeedForward: _feedforward,
    RMSNorm: _rms_norm,
    LayerNorm: _layer_norm,
    ValueResidualMix: _value_residual_mix,
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


def _supported_links(fn: str, model: nn.Module, layout: Layout) -> list[_Link]:
    """The links of ``model`` under ``layout``, once the options of ``model`` are known to mean
    the same in that x-transformers release (``x_transformers_support``; a rule's own, more
    specific refusal is raised first)."""
    with _layout(layout):
        try:
            links = _links(model)
        except RuntimeError:  # tensors no rule covers: name the option behind them if known
            check_x_transformers_support(fn, model, layout.version)
            raise
    check_x_transformers_support(fn, model, layout.version)
    return links


def _check_layout(fn: str, version: int, norm_add_unit_offset: bool) -> Layout:
    if isinstance(version, bool) or version not in (1, 2):
        raise ValueError(
            f"{fn}: version must be 1 (x-transformers 1.28.x layout) or 2 (2.x layout), "
            f"got {version!r}"
        )
    if not isinstance(norm_add_unit_offset, bool):
        raise TypeError(
            f"{fn}: norm_add_unit_offset must be a bool, got {type(norm_add_unit_offset).__name__}"
        )
    return Layout(version, norm_add_unit_offset)


def to_x_transformers_state_dict(
    model: nn.Module, *, version: int = 1, norm_add_unit_offset: bool = True
) -> dict[str, Tensor]:
    """The state_dict of the x-transformers model built with the same keywords as ``model``.

    ``version``: 1 writes the layout of x-transformers 1.28.x, 2 the one of 2.x releases, whose
    stack norm gains are stored minus one unless ``norm_add_unit_offset=False`` (2.x's keyword
    of that name; ignored with ``version=1``).

    Fused projections are split (copies); a head tied to the token embedding is left out, as
    x-transformers does; tensors that only x-transformers has are zeros where that is exact
    (the GLU bias with ``ff_no_bias=True``, the unused XTransformer encoder head). With
    ``pre_norm=True, pre_norm_has_final_norm=False`` no final norm is written (there is none):
    1.28.2, which always builds one, loads the result only with ``strict=False``.
    """
    fn = "to_x_transformers_state_dict"
    _check_model(fn, model)
    layout = _check_layout(fn, version, norm_add_unit_offset)
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    if layout.version == 2:
        layout = Layout(layout.version, layout.unit_offset, _rotary_dims(model))
    links = _supported_links(fn, model, layout)
    for link in links:
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


def load_x_transformers_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    version: int = 1,
    norm_add_unit_offset: bool = True,
) -> None:
    """Load a state_dict saved from x-transformers into ``model`` (built with the same keywords).

    ``version``: the x-transformers release that saved it, 1 (1.28.x) or 2 (2.x). A 2.x
    checkpoint stores its stack norm gains minus one unless the 2.x model was built with
    ``norm_add_unit_offset=False``: pass the same value here (ignored with ``version=1``).
    2.x's default rotary dimension is ``dim_head // 2`` (1.28.x: at least 32): build the
    anyformer model with an explicit ``rotary_emb_dim`` (a mismatch is reported, not loaded).

    Strict: every tensor of ``state_dict`` must be used and every tensor of ``model`` filled,
    with the same shapes and dtypes (nothing is cast); otherwise a ValueError lists the
    unmatched keys and the shapes and dtypes that differ, and ``model`` is left unchanged. The
    encoder output head that x-transformers' XTransformer builds but never uses
    (``encoder.to_logits.weight``) is accepted and dropped.
    """
    fn = "load_x_transformers_state_dict"
    _check_model(fn, model)
    _check_state_dict(fn, state_dict)
    layout = _check_layout(fn, version, norm_add_unit_offset)
    match = _Match(model.state_dict(), dict(state_dict))
    derived: list[tuple[str, str]] = []  # (ours, the tensor of ours it is tied to)
    if layout.version == 2:
        layout = Layout(layout.version, layout.unit_offset, _rotary_dims(model))
    links = _supported_links(fn, model, layout)
    for link in links:
        if link.extra is not None:
            match.extra(link.theirs[0], link.extra)
        elif link.source is not None:
            derived.append((link.key, link.source))
        else:
            match.take(link)
    match.raise_if_unmatched(fn, type(model).__name__, layout.version)
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
    "  (keys ending in '.gamma' are LayerNorm gains as x-transformers 2.x stores them: load a "
    "2.x checkpoint with version=2)"
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

    def raise_if_unmatched(self, fn: str, owner: str, version: int = 1) -> None:
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
        if version == 1 and any(key.endswith(".gamma") for key in self.remaining):
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
