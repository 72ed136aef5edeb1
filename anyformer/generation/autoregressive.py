"""AutoregressiveWrapper: next-token loss for training and (KV-cached) sampling for generation."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cache import KVCache
from ..checks import check_mask, check_token_ids
from ..config.options import unknown_keyword
from .filters import resolve_filter, sample, top_k

__all__ = ["AutoregressiveWrapper"]

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Warn the first time a message is seen in this process."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def _prepare_prompts(
    prompts: Tensor | Sequence[Tensor], prompt_lens: Tensor | None, pad_value: int
) -> tuple[Tensor, Tensor | None, bool]:
    """-> (b, n) prompts left-aligned and right-padded, their lengths (None if all full), squeeze."""
    if isinstance(prompts, (list, tuple)):
        if prompt_lens is not None:
            raise ValueError(
                "prompt_lens must not be given with a list of prompts (lengths are known)"
            )
        if not prompts or not all(isinstance(p, Tensor) and p.ndim == 1 for p in prompts):
            raise ValueError(
                "prompts given as a list must be a non-empty list of 1-D token tensors"
            )
        lens = torch.tensor([len(p) for p in prompts], device=prompts[0].device)
        if int(lens.min()) < 1:
            raise ValueError("every prompt must hold at least one token")
        padded = prompts[0].new_full((len(prompts), int(lens.max())), pad_value)
        for i, p in enumerate(prompts):
            padded[i, : len(p)] = p
        prompts, prompt_lens = padded, lens
    if not isinstance(prompts, Tensor):
        raise TypeError(
            f"prompts must be a tensor or a list of 1-D tensors, got {type(prompts).__name__}"
        )
    squeeze = prompts.ndim == 1
    if squeeze:
        prompts = prompts.unsqueeze(0)
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise ValueError(
            f"prompts must have shape (batch, prompt_len) with prompt_len >= 1, got {tuple(prompts.shape)}"
        )
    if prompt_lens is None:
        return prompts, None, squeeze
    b, n = prompts.shape
    if not isinstance(prompt_lens, Tensor) or tuple(prompt_lens.shape) != (b,):
        raise ValueError(f"prompt_lens must be a ({b},) integer tensor, got {prompt_lens!r}")
    lo, hi = (int(v) for v in torch.aminmax(prompt_lens))
    if lo < 1 or hi > n:
        raise ValueError(
            f"prompt_lens must lie in [1, {n}] (the prompt width), got values in [{lo}, {hi}]"
        )
    if lo == n:
        return prompts, None, squeeze
    return prompts, prompt_lens.to(prompts.device).long(), squeeze


def _positions(n: int, total: int, lens: Tensor | None, device: torch.device) -> Tensor:
    """Positions of columns [0, total): the prompt's own, then lens + k for the k-th new token."""
    cols = torch.arange(total, device=device)
    if lens is None:
        return cols
    return torch.where(cols < n, cols, lens.view(-1, 1) + cols - n)


class AutoregressiveWrapper(nn.Module):
    """Wraps a causal token model: ``forward`` gives the next-token loss, ``generate`` samples."""

    def __init__(
        self, net: nn.Module, ignore_index: int = -100, pad_value: int = 0, **kwargs: Any
    ) -> None:
        super().__init__()
        if kwargs:
            valid = ["net", "ignore_index", "pad_value"]
            raise unknown_keyword("AutoregressiveWrapper", next(iter(kwargs)), valid)
        self.net = net
        self.ignore_index = ignore_index
        self.pad_value = pad_value
        self.max_seq_len = getattr(net, "max_seq_len", 0)

    def forward(
        self,
        x: Tensor,
        return_outputs: bool = False,
        prepend_embeds: Tensor | None = None,
        mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (b, n + 1) -> mean cross-entropy of predicting x[:, 1:] from x[:, :-1].

        Targets equal to ``ignore_index`` (and, with ``mask``, masked positions) are not scored.
        """
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must be a (batch, seq_len + 1) token tensor with seq_len >= 1, got {got}"
            )
        inp, target = x[:, :-1], x[:, 1:]
        inp = inp.masked_fill(inp == self.ignore_index, self.pad_value)
        if mask is not None:
            check_mask("mask", mask, tuple(x.shape), "batch, seq_len + 1")
            target = target.masked_fill(~mask[:, 1:], self.ignore_index)
            mask = mask[:, :-1]
        logits = self.net(inp, prepend_embeds=prepend_embeds, mask=mask, **kwargs)
        if prepend_embeds is not None:
            logits = logits[:, prepend_embeds.shape[1] :]
        loss = F.cross_entropy(
            logits.transpose(1, 2).float(), target, ignore_index=self.ignore_index
        )
        return (loss, logits) if return_outputs else loss

    @staticmethod
    def _pick(
        logits: Tensor,
        temperature: float,
        filter_fn: Callable[..., Tensor],
        filter_kwargs: dict[str, Any],
        generator: torch.Generator | None,
    ) -> Tensor:
        if temperature == 0:
            return logits.argmax(dim=-1)
        return sample(filter_fn(logits, **filter_kwargs), temperature, generator)

    @torch.no_grad()
    def generate(
        self,
        prompts: Tensor | Sequence[Tensor],
        seq_len: int,
        eos_token: int | None = None,
        temperature: float = 1.0,
        prompt_lens: Tensor | None = None,
        filter_logits_fn: str | Callable[..., Tensor] = top_k,
        restrict_to_max_seq_len: bool = True,
        filter_kwargs: dict[str, Any] | None = None,
        cache_kv: bool = True,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Sample `seq_len` tokens after each prompt; returns only the new tokens (b, seq_len).

        Prompts may differ in length (a list of 1-D tensors, or ``prompt_lens``): each row then
        generates exactly what it would alone. After ``eos_token`` a row is padded with
        ``pad_value``; generation stops once every row is done. ``temperature=0`` is greedy.
        Other keywords (context, context_mask, prepend_embeds, ...) go to the model.
        """
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        prompts, lens, squeeze = _prepare_prompts(prompts, prompt_lens, self.pad_value)
        net = self.net
        num_tokens = getattr(net, "num_tokens", None)
        if num_tokens is not None:
            check_token_ids("prompts", prompts, num_tokens)
            if not 0 <= self.pad_value < num_tokens:
                raise ValueError(
                    f"pad_value must be a token id in [0, {num_tokens}), got {self.pad_value}"
                )
        filter_fn = resolve_filter(filter_logits_fn)
        filter_kwargs = dict(filter_kwargs or {})
        cache_kv = self._resolve_cache(
            cache_kv, prompts.shape[1] + seq_len, restrict_to_max_seq_len
        )
        was_training = net.training
        net.eval()
        try:
            pick = partial(
                self._pick,
                temperature=temperature,
                filter_fn=filter_fn,
                filter_kwargs=filter_kwargs,
                generator=generator,
            )
            run = self._generate_cached if cache_kv else self._generate_uncached
            out = run(prompts, lens, seq_len, eos_token, pick, restrict_to_max_seq_len, kwargs)
        finally:
            net.train(was_training)
        if eos_token is not None:
            out = self._trim_after_eos(out, eos_token)
        return out[0] if squeeze else out

    def _resolve_cache(self, cache_kv: bool, total: int, restrict: bool) -> bool:
        net = self.net
        if cache_kv and not getattr(net, "can_cache_kv", False):
            warn_once(
                f"generate(cache_kv=True): {type(net).__name__} cannot cache keys/values; decoding without a cache"
            )
            return False
        window = self.max_seq_len if restrict and self.max_seq_len > 0 else None
        if (
            cache_kv
            and window is not None
            and total > window
            and getattr(net, "has_abs_pos_emb", False)
        ):
            warn_once(
                "generate(cache_kv=True): prompt + seq_len exceeds max_seq_len with absolute positional "
                "embeddings, so the window slides and positions shift; decoding without a cache"
            )
            return False
        return cache_kv

    def _forward(self) -> Callable[..., Any]:
        """The net's forward; without re-validating inputs where the net allows it."""
        if "check_inputs" in inspect.signature(self.net.forward).parameters:
            return partial(self.net, check_inputs=False)
        return self.net

    def _generate_cached(self, prompts, lens, seq_len, eos_token, pick, restrict, kwargs) -> Tensor:
        b, n = prompts.shape
        forward = self._forward()
        prepend = {k: kwargs.pop(k) for k in ("prepend_embeds", "prepend_mask") if k in kwargs}
        p = prepend["prepend_embeds"].shape[1] if "prepend_embeds" in prepend else 0
        window = self.max_seq_len if restrict and self.max_seq_len > 0 else None
        out = prompts.new_full((b, n + seq_len), self.pad_value)
        out[:, :n] = prompts
        cache = KVCache(capacity=p + n + seq_len)
        rows = torch.arange(b, device=prompts.device)
        mask = None if lens is None else torch.arange(n, device=prompts.device) < lens[:, None]
        logits = forward(
            prompts, mask=mask, cache=cache, input_not_include_cache=True, **prepend, **kwargs
        )
        last = logits[:, -1] if lens is None else logits[rows, p + lens - 1]
        done = torch.zeros(b, dtype=torch.bool, device=prompts.device)
        for t in range(seq_len):
            token = pick(last)
            if eos_token is not None:
                token = token.masked_fill(done, self.pad_value)
                done |= token == eos_token
            out[:, n + t] = token
            if t == seq_len - 1 or (eos_token is not None and t % 8 == 7 and bool(done.all())):
                break
            if window is not None and n + t + 1 > window:
                # keys at positions <= q - window leave the window (q: the new token's position)
                key_pos = _positions(n, n + t, lens, prompts.device).expand(b, -1)
                q = (n if lens is None else lens.view(-1, 1)) + t
                cache.restrict_keys(p, key_pos >= q - window + 1)
            pos = None if lens is None else (lens + t)[:, None]
            logits = forward(
                token[:, None], pos=pos, cache=cache, input_not_include_cache=True, **kwargs
            )
            last = logits[:, -1]
        return out[:, n:]

    def _generate_uncached(
        self, prompts, lens, seq_len, eos_token, pick, restrict, kwargs
    ) -> Tensor:
        b, n = prompts.shape
        device = prompts.device
        forward = self._forward()
        p = kwargs["prepend_embeds"].shape[1] if kwargs.get("prepend_embeds") is not None else 0
        window = self.max_seq_len if restrict and self.max_seq_len > 0 else None
        total = n + seq_len
        out = prompts.new_full((b, total), self.pad_value)
        out[:, :n] = prompts
        full_mask = full_pos = None
        if lens is not None:
            cols = torch.arange(total, device=device)
            full_mask = (cols < lens[:, None]) | (cols >= n)
            full_pos = _positions(n, total, lens, device)
        rows = torch.arange(b, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for t in range(seq_len):
            cur = n + t
            tokens, mask, pos = out[:, :cur], None, None
            if lens is not None:
                mask, pos = full_mask[:, :cur], full_pos[:, :cur]
            if window is not None and lens is None and cur > window:
                tokens = tokens[:, -window:]
            elif window is not None and lens is not None:
                # each row's window ends at its own query position q = lens - 1 + t
                start = (lens - 1 + t - window + 1).clamp(min=0).view(-1, 1)
                mask = mask & (pos >= start)
                pos = (pos - start).clamp(min=0)
            logits = forward(tokens, mask=mask, pos=pos, **kwargs)
            last = logits[rows, p + lens - 1] if (lens is not None and t == 0) else logits[:, -1]
            token = pick(last)
            if eos_token is not None:
                token = token.masked_fill(done, self.pad_value)
                done |= token == eos_token
            out[:, cur] = token
            if eos_token is not None and t % 8 == 7 and bool(done.all()):
                break
        return out[:, n:]

    def _trim_after_eos(self, out: Tensor, eos_token: int) -> Tensor:
        """Cut the columns after the step where the last row emitted eos (if every row did)."""
        is_eos = out == eos_token
        if not bool(is_eos.any(dim=1).all()):
            return out
        last = int(is_eos.int().argmax(dim=1).max())
        return out[:, : last + 1]
