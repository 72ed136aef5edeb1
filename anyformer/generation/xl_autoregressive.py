"""XLAutoregressiveWrapper: train and sample a token model segment by segment with
Transformer-XL memories (https://arxiv.org/abs/1901.02860).

A sequence longer than the model's ``max_seq_len`` is cut into segments of that length; each
segment attends to the memories the previous ones left (``return_mems`` / ``mems``, kept to
``max_mem_len`` rows per layer), so the context reaches past one segment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..cache import KVCache
from ..checks import as_token_ids, check_non_empty, check_token_ids
from ..serialization import PretrainedMixin
from .arguments import (
    check_filter_kwargs,
    check_flag,
    check_generator,
    check_int,
    check_real,
    check_token_id,
)
from .filters import FILTERS, resolve_filter, top_k
from .finite import LogitGuard
from .loss import token_cross_entropy
from .sampling import Picker, stop_at_eos, trim_after_eos
from .session import eval_mode

__all__ = ["XLAutoregressiveWrapper"]


class XLAutoregressiveWrapper(
    PretrainedMixin, nn.Module, folder_wrapper=("ignore_index", "pad_value")
):
    """Wraps a causal TransformerWrapper built with ``max_seq_len`` (the segment length) and
    ``max_mem_len`` (the memory kept per layer)."""

    def __init__(self, net: nn.Module, ignore_index: int = -100, pad_value: int = 0) -> None:
        super().__init__()
        max_seq_len = getattr(net, "max_seq_len", 0) or 0
        if max_seq_len < 1:
            raise ValueError(
                "XLAutoregressiveWrapper: the net needs max_seq_len >= 1 (the segment length), "
                f"got {max_seq_len}"
            )
        stack = getattr(net, "attn_layers", None)
        if stack is None or not stack.causal:
            raise ValueError(
                "XLAutoregressiveWrapper: the net must be a TransformerWrapper around a causal "
                "stack (Decoder)"
            )
        self.net = net
        self.ignore_index = ignore_index
        self.pad_value = pad_value
        self.max_seq_len = max_seq_len

    def forward(self, x: Tensor, mems: list[Tensor] | None = None, **kwargs: Any) -> Tensor:
        """x (b, n + 1) -> next-token cross-entropy over every segment of max_seq_len inputs,
        each weighted by its share of the n positions (memories carried across segments)."""
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a (batch, seq_len + 1) token tensor, got {got}")
        check_non_empty("x", x, "batch >= 1, seq_len + 1 >= 2")
        x = as_token_ids("x", x)
        inp, labels = x[:, :-1], x[:, 1:]
        n = inp.shape[1]
        total = inp.new_zeros((), dtype=torch.float32)
        for chunk, chunk_labels in zip(
            inp.split(self.max_seq_len, dim=1), labels.split(self.max_seq_len, dim=1)
        ):
            logits, mems = self.net(chunk, mems=mems, return_mems=True, **kwargs)
            loss = token_cross_entropy(logits, chunk_labels, self.ignore_index)
            total = total + loss * (chunk.shape[1] / n)
        return total

    @torch.no_grad()
    def generate(
        self,
        start_tokens: Tensor,
        seq_len: int,
        eos_token: int | None = None,
        temperature: float = 1.0,
        filter_logits_fn: str | Callable[..., Tensor] | None = top_k,
        filter_thres: float | None = None,
        filter_kwargs: dict[str, Any] | None = None,
        mems: list[Tensor] | None = None,
        cache_kv: bool = True,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Sample `seq_len` tokens after `start_tokens` (b, t) (or (t,)); returns the new ones.

        The prompt's full segments are read first to build memories; the last (partial) one is
        the current segment. Each token is predicted from the current segment with its
        memories; when the segment is full its memories move on and a new segment starts. With
        ``cache_kv`` a segment's tokens are computed once (a KV cache that starts with the
        memories). ``temperature=0`` is greedy; ``filter_thres`` is x-transformers' top_k /
        top_p threshold (top_k keeps the best 1 - thres of the vocabulary).
        """
        squeeze = start_tokens.ndim == 1
        prompts = start_tokens[None] if squeeze else start_tokens
        if prompts.ndim != 2 or prompts.shape[1] < 1:
            raise ValueError(
                f"start_tokens must be (batch, t) or (t,) with t >= 1, got {tuple(start_tokens.shape)}"
            )
        num_tokens = _int_attribute(self.net, "num_tokens")
        check_int("seq_len", seq_len, 1)
        check_token_id("eos_token", eos_token, num_tokens)
        check_flag("cache_kv", cache_kv)
        check_generator(generator)
        prompts = as_token_ids("start_tokens", prompts)
        check_token_ids("start_tokens", prompts, num_tokens)
        guard = LogitGuard("generate", prompts.shape[1], every=8)
        pick = Picker(
            check_real("temperature", temperature, 0.0),
            *_filter(filter_logits_fn, filter_thres, filter_kwargs, num_tokens),
            generator,
            guard,
        )
        with eval_mode(self.net):
            cached = cache_kv and bool(self.net.can_cache_kv)
            steps = _Segments(self.net, prompts, mems, cached, kwargs)
            tokens = list(stop_at_eos(steps.tokens(pick, seq_len), eos_token, self.pad_value, 8))
        guard.verify()
        out = trim_after_eos(torch.stack(tokens, dim=1), eos_token)
        return out[0] if squeeze else out


def _filter(
    fn: str | Callable[..., Tensor] | None,
    thres: float | None,
    kwargs: dict[str, Any] | None,
    num_tokens: int,
) -> tuple[Callable[..., Tensor] | None, dict[str, Any]]:
    fn = None if fn is None else resolve_filter(fn)
    kwargs = check_filter_kwargs(fn, kwargs, num_tokens, builtin=False)
    if fn is None:
        return None, kwargs
    if thres is not None:
        thres = check_real("filter_thres", thres)
        if fn is top_k:
            kwargs["frac_num_tokens"] = 1.0 - thres
        else:
            kwargs["thres"] = thres
    builtin = any(fn is f for f in FILTERS.values())
    return fn, check_filter_kwargs(fn, kwargs, num_tokens, builtin)


class _Segments:
    """The current segment, its memories and (with the cache) its KV cache."""

    def __init__(
        self,
        net: nn.Module,
        prompts: Tensor,
        mems: list[Tensor] | None,
        cached: bool,
        kwargs: dict[str, Any],
    ) -> None:
        self.net, self.cached, self.kwargs = net, cached, kwargs
        self.max_seq_len = size = _int_attribute(net, "max_seq_len")
        *leading, current = prompts.split(size, dim=1)
        for chunk in leading:  # catch the memories up to the current segment
            _, mems = net(chunk, mems=mems, return_mems=True, **kwargs)
        self.mems = mems
        self.segment = current
        self.cache: KVCache | None = None

    def _logits(self) -> Tensor:
        """Next-token logits (b, V) of the current segment; moves on when it is full."""
        net, segment = self.net, self.segment
        if segment.shape[1] == self.max_seq_len:  # full: its memories are needed as a whole
            logits, new_mems = net(segment, mems=self.mems, return_mems=True, **self.kwargs)
            self.mems, self.segment, self.cache = new_mems, segment[:, :0], None
            return logits[:, -1]
        if not self.cached:
            return net(segment, mems=self.mems, **self.kwargs)[:, -1]
        if self.cache is None:
            self.cache = KVCache(capacity=self.max_seq_len + _mem_len(self.mems))
            return net(
                segment,
                mems=self.mems,
                cache=self.cache,
                input_not_include_cache=True,
                **self.kwargs,
            )[:, -1]
        return net(segment[:, -1:], cache=self.cache, input_not_include_cache=True, **self.kwargs)[
            :, -1
        ]

    def tokens(self, pick: Picker, seq_len: int) -> Iterator[Tensor]:
        for t in range(seq_len):
            logits = self._logits()
            pick.guard.observe(logits, t)
            token = pick(logits)
            self.segment = torch.cat((self.segment, token[:, None]), dim=1)
            yield token


def _int_attribute(net: nn.Module, name: str) -> int:
    """An int the wrapped net holds (its vocabulary, its segment length)."""
    return int(getattr(net, name))


def _mem_len(mems: list[Tensor] | None) -> int:
    return 0 if not mems else mems[0].shape[1]
