"""Prompts: a batch tensor, a right-padded tensor with lengths, or a list of 1-D tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["positions", "prepare_prompts"]


def prepare_prompts(
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
    if (
        not isinstance(prompt_lens, Tensor)
        or tuple(prompt_lens.shape) != (b,)
        or prompt_lens.is_floating_point()
        or prompt_lens.is_complex()
        or prompt_lens.dtype == torch.bool
    ):
        raise ValueError(f"prompt_lens must be a ({b},) integer tensor, got {prompt_lens!r}")
    lo, hi = (int(v) for v in torch.aminmax(prompt_lens))
    if lo < 1 or hi > n:
        raise ValueError(
            f"prompt_lens must lie in [1, {n}] (the prompt width), got values in [{lo}, {hi}]"
        )
    if lo == n:
        return prompts, None, squeeze
    return prompts, prompt_lens.to(prompts.device).long(), squeeze


def positions(n: int, total: int, lens: Tensor | None, device: torch.device) -> Tensor:
    """Positions of columns [0, total): the prompt's own, then lens + k for the k-th new token."""
    cols = torch.arange(total, device=device)
    if lens is None:
        return cols
    return torch.where(cols < n, cols, lens.view(-1, 1) + cols - n)
