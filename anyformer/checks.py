"""Input checks for public forwards: errors name the argument, the expected and the received value."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "as_token_ids",
    "check_attn_mask",
    "check_float_input",
    "check_mask",
    "check_non_empty",
    "check_token_ids",
]

# dtypes nn.Embedding indexes with as they are; other integer ids are converted to torch.long
_INDEX_DTYPES = (torch.int64, torch.int32)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_mask(name: str, mask: Tensor | None, shape: Sequence[int], what: str) -> None:
    """A boolean mask of exactly `shape` (True = keep / may attend)."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"{name} must be a torch.bool tensor of shape {tuple(shape)} ({what}), got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool or _shape(mask) != tuple(shape):
        raise ValueError(
            f"{name} must be a torch.bool tensor of shape {tuple(shape)} ({what}), "
            f"got shape {_shape(mask)} and dtype {mask.dtype}"
        )


def check_attn_mask(
    attn_mask: Tensor | None, batch: int, heads: int, q_len: int, k_len: int
) -> None:
    """attn_mask: bool (i, j), (h, i, j) or (b, h, i, j); 1-sized b/h broadcast."""
    if attn_mask is None:
        return
    expected = "(i, j), (h, i, j) or (b, h, i, j)"
    if not isinstance(attn_mask, Tensor):
        raise TypeError(
            f"attn_mask must be a torch.bool tensor of shape {expected}, got {type(attn_mask).__name__}"
        )
    shape = _shape(attn_mask)
    ok = attn_mask.dtype == torch.bool and 2 <= attn_mask.ndim <= 4 and shape[-2:] == (q_len, k_len)
    if ok and attn_mask.ndim >= 3:
        ok = shape[-3] in (1, heads)
    if ok and attn_mask.ndim == 4:
        ok = shape[0] in (1, batch)
    if not ok:
        raise ValueError(
            f"attn_mask must be a torch.bool tensor of shape {expected} with i={q_len}, j={k_len}, "
            f"h in (1, {heads}), b in (1, {batch}); got shape {shape} and dtype {attn_mask.dtype}"
        )


def check_float_input(name: str, x: Tensor | None, ndim: int, last_dim: int, what: str) -> None:
    """A floating tensor with `ndim` dims whose last dim is `last_dim`."""
    if x is None:
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a float tensor {what}, got {type(x).__name__}")
    if not x.is_floating_point() or x.ndim != ndim or x.shape[-1] != last_dim:
        raise ValueError(
            f"{name} must be a float tensor {what} with last dimension {last_dim}, "
            f"got shape {_shape(x)} and dtype {x.dtype}"
        )


def check_non_empty(name: str, x: Tensor, dims: str) -> None:
    """At least one row and one position: an empty batch or sequence raises (the attention
    stack has nothing to attend over)."""
    if x.ndim >= 2 and (x.shape[0] == 0 or x.shape[1] == 0):
        raise ValueError(
            f"{name} must hold at least one row and one position ({dims}), got shape {_shape(x)}"
        )


def check_token_ids(name: str, x: Tensor, num_tokens: int, sync: bool = True) -> None:
    """(b, n) integer ids in [0, num_tokens), b >= 1 and n >= 1.

    ``sync=True`` reads the smallest and largest id on the host (exact message, a host sync);
    ``sync=False`` checks them with an asynchronous device-side assert instead (no sync: the
    training hot loop on accelerators), which fails at a later synchronisation point.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a (batch, seq_len) integer tensor, got {type(x).__name__}")
    if x.dtype in (torch.bool,) or x.is_floating_point() or x.is_complex() or x.ndim != 2:
        raise ValueError(
            f"{name} must be a (batch, seq_len) integer tensor of token ids, "
            f"got shape {_shape(x)} and dtype {x.dtype}"
        )
    check_non_empty(name, x, "batch >= 1, seq_len >= 1")
    if torch.compiler.is_compiling():
        return  # reading the values would be a host sync and a graph break
    lo, hi = torch.aminmax(x)
    if not sync and _assert_on_device(
        (lo >= 0) & (hi < num_tokens),
        f"{name} holds a token id outside the vocabulary [0, {num_tokens}) "
        f"(num_tokens={num_tokens}); checked on the device without a host sync",
    ):
        return
    low, high = int(lo), int(hi)
    if low < 0 or high >= num_tokens:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name} holds token id {bad}, outside the vocabulary [0, {num_tokens}) "
            f"(num_tokens={num_tokens})"
        )


def _assert_on_device(ok: Tensor, message: str) -> bool:
    """An asynchronous device-side assert; False where the backend has none (then the caller
    checks on the host)."""
    try:
        torch._assert_async(ok, message)
    except NotImplementedError:
        return False
    return True


def as_token_ids(name: str, x: Tensor, check: bool = True) -> Tensor:
    """Token ids nn.Embedding can index with (torch.long / torch.int32).

    Other integer dtypes (uint8 bytes, int8, int16, ...) are converted to torch.long. Float
    tensors holding whole numbers are accepted (as x-transformers accepts them, e.g.
    ``torch.zeros(2, 16)`` as a prompt); other floats raise. Anything else passes through for
    ``check_token_ids`` to reject.
    """
    if not isinstance(x, Tensor) or x.dtype == torch.bool or x.is_complex():
        return x
    if not x.is_floating_point():
        return x if x.dtype in _INDEX_DTYPES else x.long()
    if check and x.numel() and not torch.compiler.is_compiling():
        bad = ~torch.isfinite(x) | (x != x.trunc())
        if bool(bad.any()):
            raise ValueError(
                f"{name} holds {x[bad][0].item()}, which is not a token id: float token ids "
                f"must be whole numbers (got dtype {x.dtype}); pass a torch.long tensor"
            )
    return x.long()
