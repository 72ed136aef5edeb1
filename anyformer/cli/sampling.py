"""Sampling text from a byte-level model, streamed as it is generated.

The tokens are exactly those of ``AutoregressiveWrapper.generate`` with the same arguments and
a ``torch.Generator`` seeded with ``seed``: the library's own decoding loop (and KV cache) makes
them; this module only composes the filters and prints each byte as it arrives.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..generation.filters import min_p, sample, top_k, top_p

__all__ = ["SamplingOptions", "build_filter", "stream_bytes"]

BYTE_VOCAB = 256


@dataclass(frozen=True)
class SamplingOptions:
    """How to pick each byte: temperature (0: greedy) and the filters, applied in this order."""

    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None


def build_filter(options: SamplingOptions, vocab: int) -> Callable[[Tensor], Tensor]:
    """top-k, then top-p, then min-p; ids >= 256 (not bytes) are never picked."""

    def apply(logits: Tensor) -> Tensor:
        if vocab > BYTE_VOCAB:
            logits = logits.clone()
            logits[..., BYTE_VOCAB:] = float("-inf")
        if options.top_k is not None:
            logits = top_k(logits, k=options.top_k)
        if options.top_p is not None:
            logits = top_p(logits, thres=options.top_p)
        if options.min_p is not None:
            logits = min_p(logits, min_p=options.min_p)
        return logits

    return apply


class _Relay:
    """A filter for ``generate`` that samples the token itself, exactly as ``generate`` would
    (the same ``sample`` call on the same generator), hands it on, and returns logits that leave
    only that token: the fallback where the wrapper has no ``stream`` method."""

    def __init__(self, filter_fn, temperature, generator, sink: Callable[[int], None]) -> None:
        self.filter_fn, self.temperature, self.generator, self.sink = (
            filter_fn,
            temperature,
            generator,
            sink,
        )

    def __call__(self, logits: Tensor) -> Tensor:
        token = sample(self.filter_fn(logits), self.temperature, self.generator)
        self.sink(int(token.reshape(-1)[0]))
        out = torch.full_like(logits, float("-inf"))
        return out.scatter_(-1, token.reshape(-1, 1), 0.0)


def _run(
    lm: nn.Module,
    prompt: Tensor,
    n: int,
    options: SamplingOptions,
    generator: torch.Generator,
    emit: Callable[[int], None],
) -> None:
    net: nn.Module = getattr(lm, "net")  # noqa: B009 - typed as a module, not a tensor
    filter_fn = build_filter(options, getattr(net, "num_tokens", BYTE_VOCAB))
    cache_kv = can_cache(net, len(prompt) + n)
    stream = getattr(lm, "stream", None)
    if stream is not None:
        for token in stream(
            prompt, n, temperature=options.temperature, filter_logits_fn=filter_fn,
            generator=generator, cache_kv=cache_kv,
        ):  # fmt: skip
            emit(int(token))
        return
    relay = _Relay(filter_fn, options.temperature, generator, emit)
    throwaway = torch.Generator(device=prompt.device).manual_seed(0)
    generate: Callable[..., Tensor] = getattr(lm, "generate")  # noqa: B009
    generate(
        prompt, n, temperature=1.0, filter_logits_fn=relay, generator=throwaway, cache_kv=cache_kv
    )


def can_cache(net: nn.Module, total: int) -> bool:
    """Whether ``generate`` keeps its KV cache for ``total`` positions: the model must cache,
    and a learned position table must cover them (past it the window slides, uncached)."""
    max_len = getattr(net, "max_seq_len", 0)
    return bool(getattr(net, "can_cache_kv", False)) and not (
        getattr(net, "has_abs_pos_emb", False) and max_len and total > max_len
    )


def stream_bytes(
    lm: nn.Module,
    prompt: bytes,
    max_new_tokens: int,
    options: SamplingOptions,
    seed: int = 0,
    write: Callable[[str], object] | None = None,
) -> bytes:
    """Generate ``max_new_tokens`` bytes after ``prompt``; each decoded piece goes to ``write``.

    Returns the new bytes. ``write`` receives text as soon as a UTF-8 character is complete.
    """
    if not prompt:
        raise ValueError("the prompt must hold at least one byte")
    device = next(lm.parameters()).device
    tokens = torch.tensor(list(prompt), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = bytearray()

    def emit(token: int) -> None:
        out.append(token)
        piece = decoder.decode(bytes([token]))
        if piece and write is not None:
            write(piece)

    lm.eval()
    _run(lm, tokens, max_new_tokens, options, generator, emit)
    tail = decoder.decode(b"", final=True)
    if tail and write is not None:
        write(tail)
    return bytes(out)
