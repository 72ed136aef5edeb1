"""Blocks: the slots around one branch (attention or feedforward), filled at construction.

A block computes ``post_norm(residual(x, post_branch_norm(branch(pre_norm(x)))))``. Pre-LN fills
``pre_norm``, post-LN fills ``post_norm``, sandwich norm fills ``post_branch_norm``; the residual
slot holds the plain sum or a variant (gating, scaling). Empty slots are ``nn.Identity``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from torch import Tensor, nn

from ..cache import KVCache
from ..nn.attend import Intermediates
from ..nn.masks import AttentionMask
from ..nn.positions.rotary import RotaryAngles
from ..nn.residual import Residual
from .hyper import HyperConnection

__all__ = ["AttentionBlock", "Block", "FeedForwardBlock", "GivenAttentionBlock", "StackRun"]

_GLOBAL_HOOKS = (
    nn.modules.module._global_forward_hooks,
    nn.modules.module._global_forward_pre_hooks,
)


@dataclass
class StackRun:
    """Per-forward state shared by all blocks (built once by the stack's forward)."""

    self_mask: AttentionMask
    cross_mask: AttentionMask | None = None
    context: Tensor | None = None
    positions: Tensor | None = None  # (b|1, n) positions of the rows being computed
    rotary: RotaryAngles | None = None  # rotary cos/sin of those rows, computed once per forward
    cross_rotary: Any = None  # context_pos: a CrossRotary for the cross-attention layers
    cache: KVCache | None = None
    collect: bool = False
    return_attn: bool = False
    hiddens: list[Tensor] = field(default_factory=list)
    layer_hiddens: list[Tensor] = field(default_factory=list)
    attn_intermediates: list[Intermediates] = field(default_factory=list)
    row_mask: Tensor | None = None  # (b, n) key mask of the rows computed now (token shift)
    dual: Tensor | None = None  # ResiDual: the pre-LN stream of summed branch outputs
    prev_attn: Tensor | None = None  # residual attention: last self-attention's logits
    prev_cross_attn: Tensor | None = None  # cross_residual_attn: last cross-attention's logits
    condition: Tensor | None = None  # adaptive norms / layerscale: forward's condition vector
    inject: Tensor | None = None  # reinject_input: added to every branch input before its norm
    values: Any = None  # add_value_residual: the ValueCarry of this forward
    hyper: Any = None  # hyper-connections: the current block's HyperState (branch input -> join)
    router_losses: list[Any] = field(default_factory=list)  # mixture-of-experts aux losses
    additional_kv: Any = None  # self_attn_additional_kv: an iterator, one entry per self-attention
    additional_kv_mask: Tensor | None = None  # its (b, m) key mask

    @property
    def self_positions(self) -> Tensor | RotaryAngles | None:
        """What self-attention's position module reads: the rotary angles, else the positions."""
        return self.positions if self.rotary is None else self.rotary


class Block(nn.Module):
    """One branch with its norm and residual slots."""

    layer_type = "?"

    def __init__(
        self,
        branch: nn.Module,
        pre_norm: nn.Module | None = None,
        post_norm: nn.Module | None = None,
        *,
        post_branch_norm: nn.Module | None = None,
        residual: nn.Module | None = None,
        token_shift: nn.Module | None = None,
        dual_scale: float | None = None,
        branch_scale: nn.Module | None = None,
        conditioned: bool = False,
    ) -> None:
        """``token_shift``: a ShiftTokens applied to the normalised branch input (its cache
        slot is the block's slot, after the attention's own); ``dual_scale``: ResiDual, the
        branch output times this scale also joins the run's second stream; ``branch_scale``:
        ``(out, condition) -> out`` on the branch output before the sandwich norm (LayerScale);
        ``conditioned``: the norms take ``(x, condition)`` (adaptive norms)."""
        super().__init__()
        self.pre_norm = pre_norm or nn.Identity()
        self.branch = branch
        self.post_branch_norm = post_branch_norm or nn.Identity()
        self.residual = residual or Residual()
        self.post_norm = post_norm or nn.Identity()
        self.token_shift = token_shift
        self.dual_scale = dual_scale
        self.branch_scale = branch_scale
        self.conditioned = conditioned
        # hyper-connections: the residual slot mixes the streams into the branch input too
        self.hyper = isinstance(self.residual, HyperConnection)

    @property
    def plain_join(self) -> bool:
        """Whether the branch output is simply added to the stream (the pre-LN block of most
        models). Read from the current slots on every call: a norm, residual or hook set after
        construction takes effect."""
        slots = self._modules
        residual = slots["residual"]
        return (
            self.dual_scale is None
            and type(residual) is Residual
            and residual.is_sum
            and not _hooked(residual)
            and type(slots["post_branch_norm"]) is nn.Identity
            and type(slots["post_norm"]) is nn.Identity
            and not (_hooked(slots["post_branch_norm"]) or _hooked(slots["post_norm"]))
            and slots.get("branch_scale") is None
        )

    @property
    def reads_positions(self) -> bool:
        """Whether the branch reads the rows' positions (the stack computes them for it)."""
        return False

    @property
    def cache_slots(self) -> int:
        """KV-cache slots one execution of this block uses (attention, token shift)."""
        return int(self.layer_type != "f") + int(self.token_shift is not None)

    def branch_input(self, x: Tensor, run: StackRun, slot: int | None) -> Tensor:
        """The normalised (and token-shifted) input of the branch."""
        if self.hyper:
            x, run.hyper = cast(HyperConnection, self.residual).prepare(x)
        if run.inject is not None:
            x = x + run.inject
        h = _norm(self.pre_norm, x, run.condition) if self.conditioned else self.pre_norm(x)
        if self.token_shift is None:
            return h
        cache = run.cache
        own = None if cache is None or slot is None else slot + self.cache_slots - 1
        layer = None if cache is None or own is None else cache.layer(own, False)
        return self.token_shift(h, run.row_mask, layer)

    def join(self, x: Tensor, out: Tensor, run: StackRun | None = None) -> Tensor:
        """Add the branch output to the stream through the residual and output-norm slots."""
        if self.plain_join:
            return x + out
        if self.dual_scale is not None and run is not None and run.dual is not None:
            run.dual = run.dual + out * self.dual_scale
        condition = None if run is None else run.condition
        if self.branch_scale is not None:
            out = self.branch_scale(out, condition)
        if self.conditioned:
            out = _norm(self.post_branch_norm, out, condition)
        else:
            out = self.post_branch_norm(out)
        if self.hyper and run is not None:
            x = cast(HyperConnection, self.residual).join(out, run.hyper)
        else:
            x = self.residual(x, out)
        return _norm(self.post_norm, x, condition) if self.conditioned else self.post_norm(x)


def _norm(norm: nn.Module, x: Tensor, condition: Tensor | None) -> Tensor:
    """A conditioned block's norm slot: an adaptive norm (``takes_condition``) gets the
    condition, any other module (Identity, a given norm) only x."""
    return norm(x, condition) if getattr(norm, "takes_condition", False) else norm(x)


def _hooked(module: nn.Module) -> bool:
    """Whether calling the module would run a forward hook (its own or a global one)."""
    return bool(
        module._forward_hooks or module._forward_pre_hooks or _GLOBAL_HOOKS[0] or _GLOBAL_HOOKS[1]
    )


class FeedForwardBlock(Block):
    layer_type = "f"

    def forward(self, x: Tensor, run: StackRun, slot: int | None = None) -> Tensor:
        if run.collect:
            run.layer_hiddens.append(x)
        return self.join(x, self.branch(self.branch_input(x, run, slot)), run)


class AttentionBlock(Block):
    """Self-attention ('a') or cross-attention ('c'); the stack gives each execution its cache slot."""

    def __init__(
        self,
        branch: nn.Module,
        *args: nn.Module | None,
        is_cross: bool,
        carries_scores: bool = False,
        **kw,
    ) -> None:
        """``carries_scores``: residual attention, the branch adds the pre-softmax logits of the
        previous attention of its kind (self / cross) and hands its own on."""
        super().__init__(branch, *args, **kw)
        self.is_cross = is_cross
        self.layer_type = "c" if is_cross else "a"
        self.carries_scores = carries_scores

    def forward(self, x: Tensor, run: StackRun, slot: int | None = None) -> Tensor:
        if run.collect:
            run.layer_hiddens.append(x)
            if not self.is_cross:
                run.hiddens.append(x)
        cache = None if run.cache is None or slot is None else run.cache.layer(slot, self.is_cross)
        carry = self.carries_scores
        prev = None
        if carry:
            prev = run.prev_cross_attn if self.is_cross else run.prev_attn
        out = self.branch(
            self.branch_input(x, run, slot),
            context=run.context if self.is_cross else None,
            plan=run.cross_mask if self.is_cross else run.self_mask,
            positions=run.cross_rotary if self.is_cross else run.self_positions,
            cache=cache,
            return_intermediates=run.collect or carry,
            return_attn=run.return_attn,
            prev_attn=prev,
            **({} if run.values is None else {"values": run.values}),
            **self._additional_kv(run),
        )
        if run.collect or carry:
            out, inter = out
            if carry and self.is_cross:
                run.prev_cross_attn = inter.carried_scores
            elif carry:
                run.prev_attn = inter.carried_scores
            if run.collect:
                inter.layer_type = self.layer_type
                run.attn_intermediates.append(inter)
        return self.join(x, out, run)

    def _additional_kv(self, run: StackRun) -> dict[str, Any]:
        """The external keys/values of this self-attention execution (self_attn_additional_kv)."""
        if self.is_cross or run.additional_kv is None:
            return {}
        added = next(run.additional_kv, None)
        if added is None:
            return {}
        return {"additional_kv": added, "additional_kv_mask": run.additional_kv_mask}

    @property
    def reads_positions(self) -> bool:
        """Self-attention with a position module (rotary) reads the rows' positions."""
        return getattr(self.branch, "position", None) is not None

    def remember(self, mem: Tensor, positions: Any, cache: KVCache, slot: int) -> None:
        """Transformer-XL: write the keys/values of memory hiddens (b, m, d) at the cache's
        start, as if they were earlier rows (their attention output is discarded).
        ``positions``: what the attention's position module reads for those rows."""
        self.branch(
            self.pre_norm(mem),
            plan=AttentionMask(),
            positions=positions,
            cache=cache.layer(slot, self.is_cross),
        )


class GivenAttentionBlock(Block):
    """An attention module the user gave (``attn_factory`` / ``cross_attn_factory``), called
    with the composition protocol: ``branch(x, context=, plan=, positions=, cache=)`` (see
    ``stack/composition.py``)."""

    carries_scores = False

    def __init__(self, branch: nn.Module, *args: nn.Module | None, is_cross: bool, **kw) -> None:
        super().__init__(branch, *args, **kw)
        self.is_cross = is_cross
        self.layer_type = "c" if is_cross else "a"

    @property
    def reads_positions(self) -> bool:
        """A given self-attention module gets the rows' positions."""
        return not self.is_cross

    @property
    def can_cache_kv(self) -> bool:
        """Whether the given module says it writes and reads the KV cache (``can_cache_kv``)."""
        return getattr(self.branch, "can_cache_kv", False) is True

    def _refuse(self, what: str) -> ValueError:
        name = type(self.branch).__name__
        kind = "cross_attn_factory" if self.is_cross else "attn_factory"
        return ValueError(f"{what}: this layer's attention is a given module ({name}, {kind})")

    def forward(self, x: Tensor, run: StackRun, slot: int | None = None) -> Tensor:
        if run.return_attn:
            raise self._refuse("return_attn: a given attention module returns no attention maps")
        if run.collect:
            run.layer_hiddens.append(x)
            if not self.is_cross:
                run.hiddens.append(x)
        cache = None
        if run.cache is not None and slot is not None:
            if not self.can_cache_kv:
                raise self._refuse(
                    "cache: the module does not set can_cache_kv = True, so it cannot decode "
                    "with a KV cache (call without cache=, or generate(cache_kv=False))"
                )
            cache = run.cache.layer(slot, self.is_cross)
        out = self.branch(
            self.branch_input(x, run, slot),
            context=run.context if self.is_cross else None,
            plan=run.cross_mask if self.is_cross else run.self_mask,
            positions=None if self.is_cross else run.positions,
            cache=cache,
        )
        return self.join(x, out, run)

    def remember(self, mem: Tensor, positions: Any, cache: KVCache, slot: int) -> None:
        """Transformer-XL memories need each attention's keys of earlier rows: refused."""
        raise self._refuse("mems: Transformer-XL memories cannot be written by a given module")
