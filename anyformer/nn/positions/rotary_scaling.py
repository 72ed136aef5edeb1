"""Rotary context extension: frequencies recomputed so a model reads past its trained length.

With ``r`` rotated features, plain rotary turns pair ``i`` by ``p * w_i``, ``w_i = theta **
(-2i / r)`` (wavelength ``2 pi / w_i``). Each scheme replaces the ``w_i`` (``L``: the context
length the model was trained with, ``s``: the extension factor):

- ``llama3`` (Llama 3 report, https://arxiv.org/abs/2407.21783): wavelengths longer than
  ``L / low_freq_factor`` are divided by ``s``, those shorter than ``L / high_freq_factor`` kept,
  and between the two ``w_i`` blends ``w_i / s`` and ``w_i`` linearly in ``L / wavelength``;
- ``yarn`` (YaRN, https://arxiv.org/abs/2309.00071, "NTK-by-parts"): pair ``i`` completes
  ``L / wavelength_i`` rotations over the trained context; pairs with more than ``beta_fast``
  rotations keep ``w_i`` (extrapolation), those with fewer than ``beta_slow`` get ``w_i / s``
  (interpolation), with a linear ramp over the dimensions between (bounds rounded outwards with
  ``truncate``); cos and sin are then multiplied by the attention factor ``0.1 ln s + 1`` (eq. 21);
- ``dynamic`` (dynamic NTK, https://www.reddit.com/r/LocalLLaMA/comments/14mrgpr/): the base
  becomes ``theta * (s * n / L - (s - 1)) ** (r / (r - 2))`` with ``n`` = the current length
  (the last position + 1) when it exceeds ``L``, so frequencies depend on the sequence;
- ``longrope`` (LongRoPE, https://arxiv.org/abs/2402.13753, Phi-3): ``w_i`` divided by a given
  per-pair factor, from ``short_factor`` while the current length is at most ``L`` and from
  ``long_factor`` beyond; cos and sin multiplied by ``sqrt(1 + ln s / ln L)``.

The length-dependent schemes (dynamic, longrope) compute each forward's frequencies from that
forward's largest position, with tensor operations only (no data-dependent Python branch). In a
cached decode the rows already cached keep the rotation they were given when computed: a step
past ``L`` rotates its new query and key with the new frequencies, as Hugging Face's decoding
does for ``dynamic``. (For ``longrope`` Hugging Face's ``generate`` instead recomputes the whole
sequence once, at the step that crosses ``L``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RotaryScaling"]


@dataclass(frozen=True)
class RotaryScaling:
    """One context-extension scheme and its parameters (see the module doc)."""

    kind: str  # "llama3" | "yarn" | "dynamic" | "longrope"
    original_max_seq_len: int
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attn_factor: float | None = None
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None

    @property
    def length_dependent(self) -> bool:
        """Whether the frequencies depend on each forward's length (not tabulated)."""
        return self.kind in ("dynamic", "longrope")

    @property
    def cos_sin_factor(self) -> float:
        """The factor cos and sin are multiplied by (YaRN's and LongRoPE's attention factor)."""
        if self.attn_factor is not None:
            return self.attn_factor
        s, original = self.factor, self.original_max_seq_len
        if self.kind == "yarn" and s > 1:
            return 0.1 * math.log(s) + 1.0
        if self.kind == "longrope" and s > 1:
            return math.sqrt(1 + math.log(s) / math.log(original))
        return 1.0

    def inv_freq(self, plain: Tensor, theta: float, dim: int) -> Tensor:
        """The (r/2,) frequencies used for every length (the short ones for longrope; the plain
        ones for dynamic, whose longer lengths go through :meth:`length_inv_freq`)."""
        if self.kind == "llama3":
            return self._llama3(plain)
        if self.kind == "yarn":
            return self._yarn(plain, theta, dim)
        if self.kind == "longrope":
            return plain / _factors(self.short_factor, plain)
        return plain

    def long_inv_freq(self, plain: Tensor) -> Tensor:
        """longrope: the frequencies once the length exceeds the original."""
        return plain / _factors(self.long_factor, plain)

    def length_inv_freq(
        self, length: Tensor, short: Tensor, long: Tensor | None, theta: float, dim: int
    ) -> Tensor:
        """The frequencies of a forward whose largest position is ``length - 1`` (a 0-d tensor):
        ``short`` (the tabulated ones) up to the original length, then dynamic NTK's or
        longrope's long ones."""
        original = self.original_max_seq_len
        if self.kind == "longrope" and long is not None:
            return torch.where(length > original, long, short)
        n = torch.clamp(length, min=original).to(short.dtype)
        s = self.factor
        base = theta * ((s * n / original) - (s - 1)) ** (dim / (dim - 2))
        pairs = torch.arange(0, dim, 2, device=short.device, dtype=short.dtype)
        return 1.0 / (base ** (pairs / dim))

    def _llama3(self, w: Tensor) -> Tensor:
        s, original = self.factor, self.original_max_seq_len
        long_wavelength = original / self.low_freq_factor  # longer: divided by s
        short_wavelength = original / self.high_freq_factor  # shorter: kept
        wavelength = 2 * math.pi / w
        scaled = torch.where(wavelength > long_wavelength, w / s, w)
        blend = (original / wavelength - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        blended = (1 - blend) * scaled / s + blend * scaled
        between = (wavelength >= short_wavelength) & (wavelength <= long_wavelength)
        return torch.where(between, blended, scaled)

    def _yarn(self, w: Tensor, theta: float, dim: int) -> Tensor:
        low, high = self._ramp_bounds(theta, dim)
        if low == high:
            high += 0.001  # a step, not a division by zero
        index = torch.arange(w.shape[0], device=w.device, dtype=torch.float32)
        ramp = ((index - low) / (high - low)).clamp(0, 1).to(w.dtype)  # 0: extrapolate
        keep = 1 - ramp
        return (w / self.factor) * (1 - keep) + w * keep

    def _ramp_bounds(self, theta: float, dim: int) -> tuple[float, float]:
        """The dimensions where pairs complete beta_fast and beta_slow rotations over the
        original context (YaRN eq. 17 inverted for the dimension)."""
        original = self.original_max_seq_len

        def dimension(rotations: float) -> float:
            return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low, high = dimension(self.beta_fast), dimension(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        return max(low, 0), min(high, dim - 1)


def _factors(values: tuple[float, ...] | None, like: Tensor) -> Tensor:
    if values is None:
        raise ValueError("RotaryScaling: longrope needs short_factor and long_factor")
    return torch.tensor(values, dtype=torch.float32, device=like.device).to(like.dtype)
