"""ContinuousAutoregressiveWrapper: next-vector prediction with a ContinuousTransformerWrapper
(mean squared error by default) and autoregressive generation of vectors, KV-cached."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cache import KVCache
from ..checks import check_mask, check_non_empty
from ..serialization import PretrainedMixin
from .arguments import check_flag, check_int
from .session import eval_mode, warn_once

__all__ = ["ContinuousAutoregressiveWrapper"]


class ContinuousAutoregressiveWrapper(
    PretrainedMixin, nn.Module, folder_wrapper=("ignore_index", "pad_value")
):
    """Wraps a causal ContinuousTransformerWrapper whose output width equals its input width."""

    def __init__(
        self,
        net: nn.Module,
        ignore_index: int = -100,
        pad_value: int = 0,
        loss_fn: nn.Module | None = None,
    ) -> None:
        """``loss_fn``: elementwise loss module (reduction='none'); default squared error, or
        the Gaussian negative log-likelihood when ``net`` is probabilistic (its output is then
        stack((mean, variance))). ``ignore_index`` / ``pad_value`` are accepted for
        x-transformers compatibility."""
        super().__init__()
        self.net = net
        self.max_seq_len = getattr(net, "max_seq_len", 0) or 0
        self.probabilistic = bool(getattr(net, "probabilistic", False))
        default = GaussianNLL() if self.probabilistic else nn.MSELoss(reduction="none")
        self.loss_fn = loss_fn if loss_fn is not None else default
        self.ignore_index = ignore_index
        self.pad_value = pad_value

    def forward(
        self, x: Tensor, mask: Tensor | None = None, lens: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """x (b, n + 1, d) -> mean loss of predicting x[:, 1:] from x[:, :-1]; ``mask``
        ((b, n + 1) or (b, n)) or ``lens`` (b,) pick the positions that count."""
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[1] < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a (batch, seq_len + 1, dim) tensor, got {got}")
        if "prepend_embeds" in kwargs:
            raise ValueError("prepend_embeds is not supported by the continuous loss")
        b, n = x.shape[0], x.shape[1] - 1
        if lens is not None:
            if mask is not None:
                raise ValueError("pass either mask or lens, not both")
            mask = torch.arange(n + 1, device=x.device) < lens.to(x.device)[:, None]
        if mask is not None:
            if mask.shape[-1] == n + 1:
                mask = mask[:, :-1]
            check_mask("mask", mask, (b, n), "batch, seq_len (or seq_len + 1)")
        inp, target = x[:, :-1], x[:, 1:]
        out = self.net(inp, mask=mask, **kwargs)
        loss = self.loss_fn(out, target)
        if mask is not None:
            loss = loss[mask]
        return loss.mean()

    @torch.no_grad()
    def generate(
        self,
        start_tokens: Tensor,
        seq_len: int,
        cache_kv: bool = True,
        temperature: float = 1.0,
        **kwargs: Any,
    ) -> Tensor:
        """Continue `start_tokens` (b, t, d) (or (t, d)) by `seq_len` predicted vectors; returns
        only the new ones. The model reads at most max_seq_len vectors (a sliding window); the
        KV cache is used when the whole generation fits in that window. A probabilistic net's
        vectors are sampled from N(mean, variance * temperature^2)."""
        if not isinstance(start_tokens, Tensor) or not start_tokens.is_floating_point():
            got = type(start_tokens).__name__
            got = f"dtype {start_tokens.dtype}" if isinstance(start_tokens, Tensor) else got
            raise TypeError(f"start_tokens must be a float tensor (batch, t, dim), got {got}")
        squeeze = start_tokens.ndim == 2
        out = start_tokens[None] if squeeze else start_tokens
        if out.ndim != 3:
            raise ValueError(
                f"start_tokens must be (batch, t, dim) or (t, dim), got {tuple(start_tokens.shape)}"
            )
        check_non_empty("start_tokens", out, "batch >= 1, t >= 1")
        check_int("seq_len", seq_len, 1)
        check_flag("cache_kv", cache_kv)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a float >= 0, got {temperature!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be a float >= 0, got {temperature!r}")
        self._temperature = float(temperature)
        t = out.shape[1]
        fits = self.max_seq_len == 0 or t + seq_len - 1 <= self.max_seq_len
        cached = cache_kv and getattr(self.net, "can_cache_kv", False) and fits
        if cache_kv and not cached:
            reason = "cannot cache keys/values" if fits else "slides its max_seq_len window"
            warn_once(
                f"generate(cache_kv=True): {type(self.net).__name__} {reason}; decoding "
                "without a cache",
                self.net,
            )
        with eval_mode(self.net):
            new = (
                self._cached(out, seq_len, kwargs)
                if cached
                else self._uncached(out, seq_len, kwargs)
            )
        joined = torch.cat(new, dim=1)
        return joined[0] if squeeze else joined

    def _uncached(self, out: Tensor, seq_len: int, kwargs: dict[str, Any]) -> list[Tensor]:
        new = []
        for _ in range(seq_len):
            window = out[:, -self.max_seq_len :] if self.max_seq_len else out
            last = self._next(self.net(window, **kwargs))
            new.append(last)
            out = torch.cat((out, last), dim=1)
        return new

    def _cached(self, out: Tensor, seq_len: int, kwargs: dict[str, Any]) -> list[Tensor]:
        cache = KVCache(capacity=out.shape[1] + seq_len)
        last = self._next(self.net(out, cache=cache, input_not_include_cache=True, **kwargs))
        new = [last]
        for _ in range(seq_len - 1):
            last = self._next(self.net(last, cache=cache, input_not_include_cache=True, **kwargs))
            new.append(last)
        return new

    def _next(self, out: Tensor) -> Tensor:
        """The next vector (b, 1, d) from the net's output: the last row, or for a
        probabilistic net a sample of N(mean, variance) at the generation's temperature."""
        last = out[..., -1:, :]
        if not self.probabilistic:
            return last
        std = last[1].clamp(min=1e-5).sqrt() * self._temperature
        return torch.normal(last[0], std)


class GaussianNLL(nn.Module):
    """Elementwise Gaussian negative log-likelihood of a target under pred = stack((mean,
    variance)): (log(variance) + (target - mean)^2 / variance) / 2 (torch's, variance >= 1e-6)."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.gaussian_nll_loss(pred[0], target, pred[1], reduction="none")
