"""A generation session: the models taking part, their steppers, and the token stream they make.

``AutoregressiveWrapper.generate`` / ``stream`` / ``beam_search`` check their arguments, build a
``Session`` and consume its tokens. The session picks a cached or an uncached stepper for each
model (expert, amateurs, draft), switches the models to eval mode for its lifetime, and chooses
the loop: plain sampling, contrastive decoding, or speculative decoding.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

from ..cache import KVCache
from ..stack import AttentionLayers
from ..stack.lean import attach, detach
from .contrastive import ContrastiveScorer
from .options import ContrastiveConfig
from .sampling import Picker, plain_tokens
from .speculative import SpeculativeStats, speculative_tokens
from .steppers import CachedStepper, Stepper, UncachedStepper

__all__ = ["GenerationIntermediates", "Session", "eval_mode", "resolve_cache", "warn_once"]

_COPY_FROM_STEPS, _PACK_FROM_STEPS = 64, 16
"""Sessions of at least this many new tokens decode from copies of the weights laid out for
their rows (stack/lean.py): for one or two rows making them costs some dozen steps and each
step gains a little; for more rows a step in the packed layout takes about half the time, so
the copies repay themselves after a few steps."""

# per model: the messages already given (a weak key, so the model itself is left untouched)
_warned: WeakKeyDictionary[nn.Module, set[str]] = WeakKeyDictionary()


def warn_once(message: str, model: nn.Module) -> None:
    """Warn the first time `message` concerns `model` (every model gets its own warnings)."""
    seen = _warned.setdefault(model, set())
    if message not in seen:
        seen.add(message)
        warnings.warn(message, stacklevel=4)


def model_window(net: nn.Module, restrict: bool) -> int | None:
    """The max_seq_len window a model reads through (None: the whole sequence)."""
    max_seq_len = getattr(net, "max_seq_len", 0) or 0
    return max_seq_len if restrict and max_seq_len > 0 else None


def resolve_cache(net: nn.Module, cache_kv: bool, total: int, restrict: bool) -> bool:
    """Whether `net` decodes with a KV cache; warns (once) when it was asked and cannot."""
    if cache_kv and not getattr(net, "can_cache_kv", False):
        warn_once(
            f"generate(cache_kv=True): {type(net).__name__} cannot cache keys/values; decoding without a cache",
            net,
        )
        return False
    window = model_window(net, restrict)
    beyond = getattr(
        net, "can_cache_beyond_max_seq_len", not getattr(net, "has_abs_pos_emb", False)
    )
    if cache_kv and window is not None and total > window and not beyond:
        warn_once(
            "generate(cache_kv=True): prompt + seq_len exceeds max_seq_len, and with absolute "
            "positional embeddings or memory tokens a sliding window changes what earlier "
            "positions computed; decoding without a cache",
            net,
        )
        return False
    return cache_kv


def unwrap(model: nn.Module, name: str) -> nn.Module:
    """An AutoregressiveWrapper's net, or the model itself; anything else raises."""
    inner = getattr(model, "net", None)
    if isinstance(inner, nn.Module) and hasattr(model, "generate"):
        return inner
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a token model (nn.Module), got {type(model).__name__}")
    return model


def _forward(net: nn.Module) -> Callable[..., Any]:
    """The net's forward; without re-validating inputs where the net allows it, and with fp32
    logits for the sampler when the net computes in a 16-bit float format."""
    forward: Callable[..., Any] = net
    if "check_inputs" in inspect.signature(net.forward).parameters:
        forward = partial(net, check_inputs=False)
    if _low_precision(net):
        return partial(_fp32_logits, forward)
    return forward


def _low_precision(net: nn.Module) -> bool:
    """Whether the net's first floating parameter is bf16 or fp16."""
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype in (torch.bfloat16, torch.float16)
    return False


def _fp32_logits(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """forward(...), its logits cast to fp32 (sampling, filters and scores in fp32)."""
    out = forward(*args, **kwargs)
    return out.float() if isinstance(out, Tensor) and out.is_floating_point() else out


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every model's training flag is restored after."""
    was = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, flag in zip(models, was):
            m.train(flag)


@dataclass
class GenerationIntermediates:
    """What ``generate(return_intermediates=True)`` returns beside the tokens."""

    cache: KVCache | None = None  # the model's cache (None when decoding recomputed)
    amateur_caches: list[KVCache | None] = field(default_factory=list)
    draft_cache: KVCache | None = None
    speculative: SpeculativeStats | None = None


class Session:
    """The models of one generate call and the loop that makes tokens with them."""

    def __init__(
        self,
        net: nn.Module,
        prompts: Tensor,
        lens: Tensor | None,
        seq_len: int,
        pick: Picker,
        *,
        cache_kv: bool,
        restrict: bool,
        pad_value: int,
        kwargs: dict[str, Any],
        amateurs: Sequence[nn.Module] = (),
        contrastive: Sequence[ContrastiveConfig] = (),
        draft: nn.Module | None = None,
        draft_tokens: int = 4,
    ) -> None:
        self.prompts, self.lens, self.seq_len, self.pick = prompts, lens, seq_len, pick
        self.cache_kv, self.restrict, self.pad_value = cache_kv, restrict, pad_value
        self.kwargs = kwargs
        self.models = [net, *amateurs, *([draft] if draft is not None else [])]
        self.speculative, self.draft_tokens = draft is not None, draft_tokens
        self.expert = self.stepper(net)
        self.amateurs = [self.stepper(m) for m in amateurs]
        self.contrastive = list(contrastive)
        self.draft = None if draft is None else self.stepper(draft)
        self.draft_tokens = draft_tokens
        self.stats = SpeculativeStats() if draft is not None else None

    def stepper(self, net: nn.Module) -> Stepper:
        """A cached stepper where the model can cache, else an uncached one."""
        total = self.prompts.shape[1] + self.seq_len
        cached = resolve_cache(net, self.cache_kv, total, self.restrict)
        args = (
            _forward(net),
            self.prompts,
            self.lens,
            self.seq_len,
            model_window(net, self.restrict),
            self.kwargs,
        )
        if cached:
            stepper = CachedStepper(*args)
            # speculative decoding rolls back up to draft_tokens + 1 rejected positions
            stepper.cache.window_slack = self.draft_tokens + 1 if self.speculative else 0
            stack = getattr(net, "attn_layers", None)
            if isinstance(stack, AttentionLayers):  # the session's own decoding loop
                rows = self.prompts.shape[0]
                attach(stack, stepper.cache, copy_weights=self._copies_pay(), rows=rows)
            return stepper
        return UncachedStepper(*args, pad_value=self.pad_value)

    def _copies_pay(self) -> bool:
        """Whether weight copies repay their making in this session."""
        rows = self.prompts.shape[0]
        return self.seq_len >= (_COPY_FROM_STEPS if rows <= 2 else _PACK_FROM_STEPS)

    def tokens(self) -> Iterator[Tensor]:
        """The raw token stream (b,) per step; eos handling is the caller's."""
        if self.draft is not None and self.stats is not None:  # (set together)
            return speculative_tokens(
                self.expert, self.draft, self.pick, self.seq_len, self.draft_tokens, self.stats
            )
        start, step = self.expert.start, _last(self.expert)
        if self.amateurs:
            scorer = ContrastiveScorer(
                start, step, [(a.start, _last(a)) for a in self.amateurs], self.contrastive
            )
            start, step = scorer.start, scorer.step
        return plain_tokens(start, step, self.pick, self.seq_len)

    def intermediates(self) -> GenerationIntermediates:
        """The caches and statistics of the session, which ends its decoding loops: calls the
        user makes with those caches run the model's current blocks."""
        for stepper in (self.expert, *self.amateurs, self.draft):
            cache = getattr(stepper, "cache", None)
            if cache is not None:
                detach(cache)
        return GenerationIntermediates(
            cache=getattr(self.expert, "cache", None),
            amateur_caches=[getattr(a, "cache", None) for a in self.amateurs],
            draft_cache=getattr(self.draft, "cache", None),
            speculative=self.stats,
        )


def _last(stepper: Stepper) -> Callable[[Tensor], Tensor]:
    """token (b,) -> the next token's logits (b, V)."""
    return lambda token: stepper.feed(token[:, None])[:, -1]
