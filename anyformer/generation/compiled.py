"""Compiled decoding (``generate(..., compile=True)``): a prefill and a one-token decode step,
each compiled once with ``torch.compile(fullgraph=True)`` over a :class:`StaticCache`.

Shapes never change from one token to the next: the cache's buffers are allocated once for a
prompt bucket plus the new tokens, every step writes its keys/values at a position tensor and
attends over the whole buffer through a mask of the written columns, and positions (rotary,
learned, ALiBi, T5) come from position tensors. Prompts are right-padded to a bucket (a power of
two, at least ``MIN_BUCKET``): causal prefill is exact for the real positions, so prompts of
different lengths in one bucket reuse the same graphs. On CUDA the decode step runs as a CUDA
graph (``mode="reduce-overhead"``).

On the CPU, one- or two-row fp32 sessions of at least ``COPY_FROM_STEPS`` tokens decode from the
session's own column-major copies of the linear weights (as eager decoding does), passed to the
decode step as graph inputs (:func:`column_major`); weights changed during a session are followed
from the next session on.

Nothing is kept from one call to the next but torch's own compiled code, whose guards check the
model as it is at every call: weights loaded in place are read by the next session, and a
replaced module recompiles (guards are checked at each session's first decode step; its later
steps skip them, ``skip_guard_eval_unsafe``). The model itself is never changed.

Models or calls the static path does not support decode eagerly (with the ordinary KV cache),
after a one-time warning that names what is not supported (:func:`unsupported`).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn
from torch._dynamo.exc import TorchDynamoException

from ..cache import StaticCache
from ..nn.attention import Attention
from ..stack.lean import COPY_BUDGET_BYTES
from .session import _forward, model_window, warn_once
from .steppers import CachedStepper, Stepper

__all__ = [
    "MIN_BUCKET",
    "CompiledStepper",
    "bucket",
    "check_compile",
    "resolve_compile",
    "unsupported",
]

MIN_BUCKET = 16
"""The smallest prompt bucket (shorter prompts are padded up to it)."""

COPY_UP_TO_ROWS = 2
"""Decode steps of at most this many rows multiply by column-major weight copies (CPU, fp32)."""

COPY_FROM_STEPS = 64
"""... in sessions of at least this many new tokens (shorter ones do not repay the copying)."""

_ATTENTION_OPTIONS = {
    "max_attend_past": "attn_max_attend_past",
    "sliding_window": "attn_sliding_window",
    "use_latent_kv": "attn_use_latent_kv (the cache holds latents)",
}
"""Attention options that read key columns by count (a window of the last keys): over the
static cache's masked columns they would not compute what eager decoding computes."""

_COMPILED: WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], Callable[..., Tensor]]]
_COMPILED = WeakKeyDictionary()


def check_compile(value: object) -> dict[str, Any] | None:
    """``compile``: False (eager), True, or a dict of ``torch.compile`` keywords (``backend``,
    ``mode``, ``options``, ``dynamic``); returns those keywords, or None for eager."""
    if value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise TypeError(
            "compile must be True, False or a dict of torch.compile keywords, got "
            f"{value!r} ({type(value).__name__})"
        )
    allowed = ("backend", "mode", "options", "dynamic")
    for key in value:
        if key not in allowed:
            raise ValueError(
                f"compile: {key!r} is not a torch.compile keyword passed on here (one of "
                f"{', '.join(allowed)}; fullgraph is always True)"
            )
    return dict(value)


def bucket(n: int, limit: int | None = None) -> int:
    """The prompt width n is padded to: the next power of two >= max(n, MIN_BUCKET), at most
    ``limit`` (the positions the model has) but never below n."""
    width = max(MIN_BUCKET, 1 << (n - 1).bit_length())
    if limit is not None and width > limit:
        width = max(n, limit)
    return width


def unsupported(net: nn.Module, call: dict[str, Any]) -> str | None:
    """Why the static path cannot decode this call (an option or argument), else None.

    ``call``: the call's arguments that matter (``cache_kv``, ``amateur_model``,
    ``draft_model``, ``kwargs``, ``window_exceeded``)."""
    from ..nn.moe import MixtureOfExperts
    from ..stack import AttentionLayers
    from ..wrappers.transformer import TransformerWrapper

    if type(net) is not TransformerWrapper:
        return f"the model is a {type(net).__name__}, not a TransformerWrapper"
    for name in ("cache_kv", "amateur_model", "draft_model", "kwargs", "window_exceeded"):
        if call.get(name):
            return _CALL_REASONS[name]
    stack = net.attn_layers
    if not isinstance(stack, AttentionLayers) or not stack.causal or not stack.can_cache_kv:
        return "the stack is not a causal, cacheable Decoder"
    if net.num_memory_tokens:
        return "num_memory_tokens (memory tokens)"
    c = stack.config
    if c.cross_attend or c.only_cross:
        return "cross_attend (cross-attention)"
    if c.positions.rotary_xpos:
        return "rotary_xpos (xPos)"
    if any(block.token_shift is not None for block in stack.layers):
        return "shift_tokens (token shift)"
    if any(isinstance(m, MixtureOfExperts) for m in stack.modules()):
        # static shapes run every expert on every token: 15x slower than eager at one token
        return "ff_num_experts (a mixture of experts: compiled, every expert runs on every token)"
    for block in stack.layers:
        if block.layer_type == "a" and type(block.branch) is not Attention:
            return f"a self-attention branch of type {type(block.branch).__name__}"
        config = getattr(block.branch, "config", None)
        for field, option in _ATTENTION_OPTIONS.items():
            if config is not None and getattr(config, field, None):
                return option
    return None


def resolve_compile(
    value: object,
    net: nn.Module,
    *,
    cache_kv: bool,
    partners: bool,
    draft: bool,
    kwargs: dict[str, Any],
    total: int,
    restrict: bool,
) -> dict[str, Any] | None:
    """``generate(compile=...)``: the torch.compile keywords to decode `net` with, or None to
    decode eagerly (not asked for, or not supported: then a one-time warning names why)."""
    options = check_compile(value)
    if options is None:
        return None
    window = model_window(net, restrict)
    call = {
        "cache_kv": not cache_kv,
        "amateur_model": partners,
        "draft_model": draft,
        "kwargs": bool(kwargs),
        "window_exceeded": window is not None and total > window,
    }
    reason = unsupported(net, call)
    if reason is None:
        return options
    warn_once(
        f"generate(compile=True): compiled decoding does not support {reason}; decoding "
        "without compiling",
        net,
    )
    return None


_CALL_REASONS = {
    "cache_kv": "cache_kv=False",
    "amateur_model": "amateur_model (contrastive decoding)",
    "draft_model": "draft_model (speculative decoding)",
    "kwargs": "model keywords (context, prepend_embeds, ...)",
    "window_exceeded": "prompt + seq_len beyond max_seq_len (a sliding window)",
}


def _prefill(net: nn.Module, cache: StaticCache, tokens: Tensor, last: Tensor) -> Tensor:
    """The logits (b, V) after each row's last real prompt token (prompts right-padded)."""
    logits = net(tokens, cache=cache, input_not_include_cache=True, check_inputs=False)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    return logits[rows, last]


def _decode(
    net: nn.Module, weights: dict[str, Tensor], cache: StaticCache, token: Tensor, pos: Tensor
) -> Tensor:
    """One token per row (b, 1) at positions pos (b,) -> the next token's logits (b, V);
    ``weights``: tensors to use in place of the named parameters (graph inputs), or empty."""
    cache.at(pos)
    kwargs = {"pos": pos.unsqueeze(-1), "cache": cache, "input_not_include_cache": True}
    kwargs["check_inputs"] = False
    if weights:
        logits = torch.func.functional_call(net, weights, (token,), kwargs, strict=False)
    else:
        logits = net(token, **kwargs)
    return logits[:, -1]


def column_major(net: nn.Module, rows: int, steps: int) -> dict[str, Tensor]:
    """A session's column-major copies of the fp32 weights of `net`'s plain linear maps on the
    CPU (the layout this CPU's matrix-vector products read fastest), keyed by parameter name,
    for the decode step to multiply by in place of the model's own; empty where they would not
    pay (more than COPY_UP_TO_ROWS rows, fewer than COPY_FROM_STEPS steps, other devices or
    dtypes, more than COPY_BUDGET_BYTES in all). The model itself is never changed."""
    if rows > COPY_UP_TO_ROWS or steps < COPY_FROM_STEPS:
        return {}
    found = {}
    for name, module in net.named_modules():
        weight = getattr(module, "weight", None)
        if type(module) is nn.Linear and type(weight) is nn.Parameter:
            found[f"{name}.weight" if name else "weight"] = weight
    plain = all(w.device.type == "cpu" and w.dtype == torch.float32 for w in found.values())
    total = sum(w.numel() * w.element_size() for w in found.values())
    if not found or not plain or total > COPY_BUDGET_BYTES:
        return {}
    return {name: w.detach().t().contiguous().t() for name, w in found.items()}


def compiled(
    net: nn.Module, kind: str, options: dict[str, Any], shape: tuple[Any, ...]
) -> Callable[..., Tensor]:
    """The compiled prefill ('prefill') or decode step ('decode') of `net` for these
    torch.compile keywords and this call shape (batch, prompt bucket, cache columns, device).

    Each gets its own code object, so torch's per-function limit on recompilations (a hard
    error with fullgraph=True) is never reached by many shapes or models; torch's guards
    still check the model at every call (a replaced module recompiles that function)."""
    device = shape[-1]
    if "mode" not in options and device.type == "cuda" and kind == "decode":
        options = {**options, "mode": "reduce-overhead"}  # CUDA graphs
    options = {"dynamic": False, **options}  # one specialised graph per shape
    key = (kind, repr(sorted(options.items())), *shape)
    table = _COMPILED.setdefault(net, {})
    fn = table.get(key)
    if fn is None:
        template = _prefill if kind == "prefill" else _decode
        fresh = types.FunctionType(template.__code__.replace(), template.__globals__, kind)
        fn = torch.compile(fresh, fullgraph=True, **options)
        table[key] = fn
    return fn


def _slot_shapes(net: nn.Module) -> list[tuple[int, int, int]]:
    """(kv_heads, dim_head, value_dim) of every KV-cache slot of the stack, in slot order."""
    from ..stack import AttentionLayers

    stack = net.attn_layers
    if not isinstance(stack, AttentionLayers):
        raise TypeError(f"compiled decoding needs an AttentionLayers stack, got {type(stack)}")
    layers = list(stack.layers)
    shapes = []
    for index, slot in stack.execution_plan:
        if slot is not None:
            attn = layers[index].branch
            if not isinstance(attn, Attention):
                raise TypeError(f"compiled decoding: slot {slot} holds a {type(attn).__name__}")
            shapes.append((attn.kv_heads, attn.dim_head, attn.value_dim))
    return shapes


class CompiledStepper(Stepper):
    """A stepper (see :mod:`.steppers`) whose prefill and decode steps are compiled graphs over
    a :class:`StaticCache`; it appends one token per call and neither truncates nor reorders."""

    def __init__(
        self,
        net: nn.Module,
        prompts: Tensor,
        lens: Tensor | None,
        max_new: int,
        window: int | None,
        kwargs: dict[str, Any],
        *,
        options: dict[str, Any],
        pad_value: int = 0,
    ) -> None:
        """As a Stepper's arguments (`net` is the model itself); ``options``: torch.compile
        keywords; ``pad_value``: the token the prompts are padded with up to their bucket."""
        super().__init__(net, prompts, lens, max_new, window, kwargs)
        b, n = self.prompts.shape
        device = self.prompts.device
        limit = getattr(net, "max_positions", None)
        width = bucket(n, limit if isinstance(limit, int) else None)
        self.tokens = self.prompts.new_full((b, width), pad_value)
        self.tokens[:, :n] = self.prompts
        lens = self.lens if self.lens is not None else torch.full((b,), n, device=device)
        self.last = lens - 1
        self.next_pos = lens.clone()  # row r's next token goes to column lens[r] + num_new
        weight = next(iter(net.parameters()))
        dtype = weight.dtype if weight.is_floating_point() else torch.get_default_dtype()
        max_len = 1 << (width + self.max_new - 1).bit_length()  # a bucket of seq_len too
        self.cache = StaticCache(b, max_len, _slot_shapes(net), dtype, device)
        self.net = net
        self.eager: Stepper | None = None  # where compiling failed: the eager stepper
        self.fed: list[Tensor] = []  # the tokens fed so far (replayed by an eager fallback)
        self.weights = column_major(net, b, self.max_new)  # this session's copies (or none)
        shape = (b, width, max_len, dtype, device)
        self.prefill_fn = compiled(net, "prefill", options, shape)
        self.decode_fn = compiled(net, "decode", options, (*shape[:-1], bool(self.weights), device))
        if device.type == "cuda":
            for buffer in self.cache.buffers():
                torch._dynamo.mark_static_address(buffer)

    def start(self) -> Tensor:
        try:
            self.cache.begin_prefill()
            logits = self.prefill_fn(self.net, self.cache, self.tokens, self.last)
        except TorchDynamoException as error:
            return self._fall_back(error).start()
        self.cache.begin_decode()
        return logits.clone()

    def feed(self, tokens: Tensor) -> Tensor:
        if tokens.shape[1] != 1:
            raise ValueError(
                f"compiled decoding appends one token per row at a time, got {tokens.shape[1]}"
            )
        if self.eager is not None:
            return self.eager.feed(tokens)
        self._check_chunk(1)
        try:
            pos = self.next_pos + self.num_new
            # guards checked at the session's first step; the later ones skip them (the model
            # is not followed within a session, as in eager decoding)
            skip = self.num_new > 0
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=skip):
                logits = self.decode_fn(self.net, self.weights, self.cache, tokens, pos)
        except TorchDynamoException as error:
            eager = self._fall_back(error)
            eager.start()
            if self.fed:
                eager.feed(torch.cat(self.fed, dim=1))
            return eager.feed(tokens)
        self.fed.append(tokens)
        self.num_new += 1
        return logits.clone()[:, None]  # the graph's output buffer is reused by the next step

    def _fall_back(self, error: Exception) -> Stepper:
        """torch.compile failed (a graph break, no C++ compiler, ...): warn once, and decode
        this session with the eager KV-cached stepper from its start."""
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warn_once(
            f"generate(compile=True): compiling failed ({type(error).__name__}: {first[:200]}); "
            "decoding without compiling",
            self.net,
        )
        args = (self.prompts, self.lens, self.max_new, self.window, self.kwargs)
        self.eager = CachedStepper(_forward(self.net), *args)
        return self.eager

    def truncate(self, num_new: int) -> None:
        raise ValueError("compiled decoding cannot roll back tokens (speculative decoding)")

    def reorder(self, rows: Tensor) -> None:
        raise ValueError("compiled decoding cannot reorder rows (beam search)")
