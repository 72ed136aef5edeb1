"""The decoding loop of one generation session: a plain stack's blocks run as plain tensor code.

Most models are stacks of the plain pre-norm block: ``x + branch(norm(x))`` with self-attention
on the fused kernel and a feedforward. For such stacks the loop below runs the same computations
(the same module methods and kernels, so the same numbers) without the per-block module
machinery; for long sessions on the CPU it multiplies by its own copies of the linear weights
in the layout the CPU reads fastest for the session's rows (the session's choice, within
COPY_BUDGET_BYTES): for one fp32 row column-major (matrix-vector products), for several fp32
rows and for bf16 oneDNN's packed layout for that many rows (its products over a few rows run
about twice as fast as F.linear's on the plain layout here; they round differently, as any
other kernel does). Quantized linear maps (anyformer.quantize) are called as they are. The model
itself is never changed.

A loop is built by a generation session from the stack's modules as they are when the session
starts (``LeanLoop.build`` returns None when some module is not of the exact type it knows) and
attached to the session's KV cache, and detached when the session hands that cache to the user.
The stack uses it only for calls with that cache, in eval mode, without intermediates, when no
forward hook is registered on the modules it skips, and outside ``torch.compile``. Modules or
weights changed while a ``stream`` is open are not followed by that stream (the next session
sees them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cache import KVCache
from ..nn.attention import Attention, FusedQKV
from ..nn.feedforward import GLU, FeedForward
from ..nn.masks import AttentionMask
from ..nn.positions.rotary import RotaryAngles
from ..quantize.bf16 import packed_bf16_supported
from ..quantize.swap import OWN_KERNEL_TYPES
from .blocks import AttentionBlock, FeedForwardBlock, StackRun

__all__ = ["COPY_BUDGET_BYTES", "LeanLoop", "attach", "detach", "loop_for"]

COPY_BUDGET_BYTES = 256 * 2**20
"""At most this many bytes of column-major weight copies per session (larger stacks, and
devices other than the CPU, decode from the model's own weights)."""

_GLOBAL_HOOKS = (
    nn.modules.module._global_forward_hooks,
    nn.modules.module._global_forward_pre_hooks,
)

_LOOPS: WeakKeyDictionary[KVCache, LeanLoop] = WeakKeyDictionary()

_Map = Callable[[Tensor], Tensor]
"""A linear map the loop multiplies by: x (rows, in) -> (rows, out)."""


@dataclass(frozen=True)
class _Linear:
    """A linear map: the weight to multiply by (the session's copy or the module's own)."""

    weight: Tensor
    bias: Tensor | None

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class _Step:
    """One execution of a block: its norm and branch, its linear maps, its KV-cache slot."""

    norm: Any  # the block's pre-norm module
    branch: Any  # its Attention or FeedForward
    slot: int | None
    is_attention: bool
    maps: tuple[_Map | None, _Map]  # attention: (to_qkv or None, to_out); ff: (in, out)
    act: _Map | None = None  # ff: its activation and post-activation norm, as one function


def _exact_linear(module: object) -> bool:
    """A plain nn.Linear, or a linear map of anyformer.quantize (with its own kernel)."""
    if type(module) in OWN_KERNEL_TYPES:
        return True
    return type(module) is nn.Linear and type(module.weight) is nn.Parameter


def _plain_attention(block: Any) -> bool:
    if type(block) is not AttentionBlock or block.is_cross or block.carries_scores:
        return False
    attn = block.branch
    return (
        type(attn) is Attention
        and attn.attend.fused
        and attn.prepended is None
        and attn.window is None
        and len(attn.head_ops) == 0
        and attn.to_v_gate is None
        and attn.to_output_gate is None
        and attn.sink is None
        and attn.data_alibi is None
        and attn.differential is None
        and _exact_linear(attn.to_out)
    )


def _plain_feedforward(block: Any) -> bool:
    if type(block) is not FeedForwardBlock or type(block.branch) is not FeedForward:
        return False
    ff = block.branch
    return (
        _exact_linear(ff.proj_in) and _exact_linear(ff.proj_out) and type(ff.dropout) is nn.Dropout
    )


def _plain_block(block: Any) -> bool:
    return bool(
        block.plain_join
        and block.token_shift is None
        and (_plain_attention(block) or _plain_feedforward(block))
    )


class _Weights:
    """The session's copies of the weights, within a byte budget: fp32 column-major for one
    row, else in oneDNN's packed layout for `rows` rows; bf16 packed where the CPU multiplies
    bf16 natively (AVX-512 BF16 / AMX)."""

    def __init__(self, linears: list[nn.Linear], copy: bool, rows: int = 1) -> None:
        total = sum(m.weight.numel() * m.weight.element_size() for m in linears)
        self.copy = copy and total <= COPY_BUDGET_BYTES
        self.rows = max(1, rows)

    def map(self, linear: Any) -> _Map:
        if type(linear) is not nn.Linear:  # anyformer.quantize's maps: their own kernels
            return linear.forward
        weight = linear.weight.detach()
        bias = None if linear.bias is None else linear.bias.detach()
        if not (self.copy and weight.device.type == "cpu" and type(weight) is torch.Tensor):
            return _Linear(weight, bias)
        if weight.dtype == torch.float32 and self.rows > 1 and torch.backends.mkldnn.is_available():
            return _packed(weight, bias, self.rows)
        if weight.dtype == torch.float32:
            return _Linear(weight.t().contiguous().t(), bias)
        if weight.dtype == torch.bfloat16 and packed_bf16_supported():
            return _packed(weight, bias, self.rows)
        return _Linear(weight, bias)


def _packed(weight: Tensor, bias: Tensor | None, rows: int) -> _Map:
    """The weight packed by oneDNN for `rows` rows; the plain map where this build cannot."""
    try:
        return _Packed(torch.ops.mkldnn._reorder_linear_weight(weight, rows), bias)
    except RuntimeError:  # pragma: no cover - a oneDNN build without this layout
        return _Linear(weight, bias)


@dataclass(frozen=True)
class _Packed:
    """A linear map on a copy of its weight in oneDNN's packed layout (packed for the session's
    number of rows; any number of rows may use it): for bf16 the same oneDNN product F.linear
    runs (the same numbers), without re-reading the plain layout at every call; for fp32
    oneDNN's product, where F.linear calls the BLAS."""

    packed: Tensor
    bias: Tensor | None

    def __call__(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class LeanLoop:
    """The blocks of a plain stack in execution order, run without their module wrappers."""

    def __init__(self, stack: nn.Module, steps: list[_Step], skipped: list[nn.Module]) -> None:
        self.stack = stack
        self.steps = steps
        self.skipped = skipped  # the modules whose __call__ (and hooks) this loop bypasses
        # their hook dicts (registering a hook adds to them): one C-level test per call
        self.hook_dicts = [d for m in skipped for d in (m._forward_hooks, m._forward_pre_hooks)]
        # oneDNN's packed products take no part in autocast: under CPU autocast the blocks run
        self.packed = any(type(m) is _Packed for s in steps for m in s.maps)

    @staticmethod
    def build(stack: nn.Module, copy_weights: bool = True, rows: int = 1) -> LeanLoop | None:
        """The loop for the stack's current blocks and plan; None if some block is not plain.
        ``copy_weights``: decode from copies laid out for ``rows`` rows (CPU, within
        COPY_BUDGET_BYTES)."""
        layers: list[Any] = list(cast(Any, stack).layers)
        if not all(_plain_block(block) for block in layers):
            return None
        linears = [m for block in layers for m in block.branch.modules() if type(m) is nn.Linear]
        weights = _Weights(linears, copy_weights, rows)
        maps = [_maps(block.branch, weights) for block in layers]
        skipped: list[nn.Module] = []
        acts: list[_Map | None] = []
        for block in layers:
            branch = block.branch
            skipped += [block, block.pre_norm, branch]
            if isinstance(branch, Attention):
                skipped += [branch.attend, branch.to_out, branch.qkv, *branch.qkv.children()]
                acts.append(None)
            else:
                act, bypassed = _activation(branch)
                skipped += [branch.proj_in, branch.proj_out, branch.dropout, *bypassed]
                acts.append(act)
        steps = [
            _Step(block.pre_norm, block.branch, slot, block.layer_type == "a", maps[i], acts[i])
            for i, slot in cast(Any, stack).execution_plan
            for block in (layers[i],)
        ]
        return LeanLoop(stack, steps, skipped)

    def usable(self) -> bool:
        """No forward hook would be skipped, no compiler is tracing, and no CPU autocast would
        be bypassed by packed weights."""
        if any(_GLOBAL_HOOKS) or torch.compiler.is_compiling():
            return False
        if self.packed and torch.is_autocast_enabled("cpu"):
            return False
        return not any(self.hook_dicts)

    def __call__(self, x: Tensor, run: StackRun) -> Tensor:
        b, n, d = x.shape
        x = x.reshape(b * n, d)
        cache, mask, positions = run.cache, run.self_mask, run.self_positions
        for step in self.steps:
            h = step.norm.forward(x)
            if step.is_attention:
                x = x + _attention(step, h.view(b, n, d), cache, mask, positions)
            else:
                x = x + _feedforward(step, h)
        return x.view(b, n, d)


def attach(stack: nn.Module, cache: KVCache, copy_weights: bool = True, rows: int = 1) -> bool:
    """Build the stack's loop for a decoding session of `rows` rows whose calls pass `cache`;
    False when the stack is not plain (it then runs its blocks)."""
    loop = LeanLoop.build(stack, copy_weights, rows)
    if loop is not None:
        _LOOPS[cache] = loop
    return loop is not None


def detach(cache: KVCache) -> None:
    """End the session's use of its loop: later calls with this cache run the blocks."""
    _LOOPS.pop(cache, None)


def loop_for(stack: nn.Module, cache: KVCache | None) -> LeanLoop | None:
    """The loop a session attached to this cache for this stack, if any."""
    loop = None if cache is None else _LOOPS.get(cache)
    return loop if loop is not None and loop.stack is stack else None


def _maps(branch: Any, weights: _Weights) -> tuple[_Map | None, _Map]:
    """The linear maps the loop multiplies by directly, in _Step.maps order."""
    if isinstance(branch, Attention):
        qkv = branch.qkv
        fused = type(qkv) is FusedQKV and _exact_linear(qkv.to_qkv)
        return (weights.map(qkv.to_qkv) if fused else None, weights.map(branch.to_out))
    return weights.map(branch.proj_in), weights.map(branch.proj_out)


def _attention(
    step: _Step,
    h: Tensor,
    cache: KVCache | None,
    mask: AttentionMask,
    positions: Tensor | RotaryAngles | None,
) -> Tensor:
    """Attention.forward for a plain self-attention layer, on (b, n, dim) -> (b * n, dim)."""
    attn = step.branch
    to_qkv, to_out = step.maps
    layer_cache = None if cache is None else cache.layer(cast(int, step.slot), False)
    b, n = h.shape[:2]
    if to_qkv is not None and attn.rotates_together(positions):  # one 2-D product
        qkv = to_qkv(h.view(b * n, -1)).view(b, n, -1)
        q, k, v = attn.split_rotated(qkv, positions, layer_cache)
    else:
        q, k, v = attn._project(h, None, positions, layer_cache)
    out, _ = attn.attend.forward(q, k, v, mask)
    return to_out(out.transpose(1, 2).reshape(b * n, -1))


def _feedforward(step: _Step, h: Tensor) -> Tensor:
    """FeedForward.forward on (b * n, dim)."""
    ff = step.branch
    proj_in, proj_out = step.maps
    h = cast(_Map, step.act)(cast(_Map, proj_in)(h))
    if ff.dropout.training:
        h = ff.dropout(h)
    return proj_out(h)


_ELEMENTWISE: dict[type, Callable[[Any], _Map]] = {
    nn.SiLU: lambda m: F.silu,
    nn.ReLU: lambda m: F.relu,
    nn.GELU: lambda m: partial(F.gelu, approximate=m.approximate),
}
"""Activation modules of these exact types are the functional call their forward makes."""


def _activation(ff: Any) -> tuple[_Map, list[nn.Module]]:
    """The feedforward's activation then post-activation norm as one function (the same ops
    as its modules' forwards, without their calls where they are of a type known here), and
    the modules whose calls it skips."""
    act, post = ff.act, ff.post_act_norm
    if type(post) is nn.Identity:
        if type(act) in _ELEMENTWISE:
            return _ELEMENTWISE[type(act)](act), [act, post]
        inner = getattr(act, "act", None)
        if type(act) is GLU and act.mult_bias is None and type(inner) in _ELEMENTWISE:
            gate_act = _ELEMENTWISE[type(inner)](inner)
            return partial(_glu, gate_act), [act, cast(nn.Module, inner), post]
    return partial(_then, act, post), []


def _glu(gate_act: _Map, h: Tensor) -> Tensor:
    """GLU.forward without a multiplier: value * act(gate)."""
    value, gate = h.chunk(2, dim=-1)
    return value * gate_act(gate)


def _then(first: _Map, second: _Map, h: Tensor) -> Tensor:
    return second(first(h))
