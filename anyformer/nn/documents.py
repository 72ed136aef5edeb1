"""Packed sequences (document masking): several documents share one row of the batch.

A row's documents are given as ``seq_lens`` (b, k), the lengths of the documents packed one after
the other from column 0 (zeros: unused slots; the columns after the last document are padding),
or as ``doc_ids`` (b, n), a document id per token (each document one contiguous run of equal
non-negative ids; negative ids mark padding). Each token attends only to tokens of its own
document (and, in a causal stack, only to earlier ones), and every position scheme counts from
the document's first token, so that a packed row computes what its documents compute one by one.

The documents become a boolean keep-mask (b, 1, n, n), shared by the heads, which the fused
kernel (SDPA) takes as it is, and per-token positions (b, n) that the position modules read as
they read ``pos``. Padding tokens attend to nothing (their attention output is zero) and are
no key of any document.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .masks import causal_keep_mask

__all__ = ["PackedDocuments", "packed_documents"]


@dataclass(frozen=True)
class PackedDocuments:
    """The documents of a packed batch: ``ids`` (b, n) long, the document of every token (-1 on
    padding), and ``positions`` (b, n) long, each token's position inside its document (0 on
    padding)."""

    ids: Tensor
    positions: Tensor

    @property
    def real(self) -> Tensor:
        """(b, n) bool: True on the tokens of a document (False on padding)."""
        return self.ids >= 0

    def keep_mask(self, causal: bool) -> Tensor:
        """(b, 1, n, n) bool: True where query i may attend key j (same document, j real, and
        with ``causal`` j <= i)."""
        ids = self.ids
        keep = (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & self.real.unsqueeze(-2)
        if causal:
            n = ids.shape[-1]
            keep = keep & causal_keep_mask(n, n, ids.device)
        return keep.unsqueeze(1)

    def next_in_document(self) -> Tensor:
        """(b, n - 1) bool: True where token t + 1 continues the document of token t (the
        next-token targets that stay inside one document)."""
        ids = self.ids
        return (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0)

    def drop_last(self) -> PackedDocuments:
        """The documents of the row without its last column (an autoregressive input)."""
        return PackedDocuments(self.ids[:, :-1], self.positions[:, :-1])


def packed_documents(
    seq_lens: Tensor | None,
    doc_ids: Tensor | PackedDocuments | None,
    b: int,
    n: int,
    device: torch.device,
    check: bool = True,
) -> PackedDocuments | None:
    """Check ``seq_lens`` (b, k) or ``doc_ids`` (b, n) against a batch of b rows of n tokens and
    turn them into PackedDocuments (None when neither is given). ``doc_ids`` may be a
    PackedDocuments already (a wrapper hands its stack the documents it resolved); ``check=False``
    skips the value checks that read the tensors on the host (the shapes are still checked)."""
    if seq_lens is not None and doc_ids is not None:
        raise ValueError("pass either seq_lens or doc_ids (packed documents), not both")
    if isinstance(doc_ids, PackedDocuments):
        if tuple(doc_ids.ids.shape) != (b, n):
            raise ValueError(f"doc_ids must have shape ({b}, {n}), got {tuple(doc_ids.ids.shape)}")
        return doc_ids
    if seq_lens is not None:
        return _from_seq_lens(seq_lens, b, n, device, check)
    if doc_ids is not None:
        return _from_doc_ids(doc_ids, b, n, device, check)
    return None


def _integer_tensor(name: str, value: object, shape: str) -> Tensor:
    """``value`` must be a 2-D integer tensor (not bool)."""
    if (
        not isinstance(value, Tensor)
        or value.ndim != 2
        or value.is_floating_point()
        or value.is_complex()
        or value.dtype == torch.bool
    ):
        got = (
            f"{value.dtype} tensor of shape {tuple(value.shape)}"
            if isinstance(value, Tensor)
            else type(value).__name__
        )
        raise ValueError(f"{name} must be an integer tensor of shape {shape}, got {got}")
    return value


def _from_seq_lens(
    seq_lens: Tensor, b: int, n: int, device: torch.device, check: bool
) -> PackedDocuments:
    """Document lengths (b, k), packed from column 0 -> PackedDocuments."""
    lens = _integer_tensor("seq_lens", seq_lens, f"({b}, num_documents)")
    if lens.shape[0] != b or lens.shape[1] < 1:
        raise ValueError(
            f"seq_lens must have shape ({b}, num_documents) with num_documents >= 1, got "
            f"{tuple(lens.shape)}"
        )
    lens = lens.to(device=device, dtype=torch.long)
    if check and lens.numel() and not torch.compiler.is_compiling():
        lowest, longest = int(lens.min()), int(lens.sum(-1).max())
        if lowest < 0 or longest > n:
            raise ValueError(
                f"seq_lens must hold lengths >= 0 that sum to at most the row length {n} per "
                f"row, got a smallest length {lowest} and a largest row sum {longest}"
            )
    ends = lens.cumsum(-1)  # (b, k) one past each document's last column
    cols = torch.arange(n, device=device)
    ids = torch.searchsorted(ends, cols.expand(b, n).contiguous(), right=True)
    starts = (ends - lens).gather(-1, ids.clamp(max=lens.shape[1] - 1))
    real = ids < lens.shape[1]
    return PackedDocuments(
        ids=torch.where(real, ids, -1), positions=torch.where(real, cols - starts, 0)
    )


def _from_doc_ids(
    doc_ids: Tensor, b: int, n: int, device: torch.device, check: bool
) -> PackedDocuments:
    """Document id per token (b, n) -> PackedDocuments (documents must be contiguous runs)."""
    ids = _integer_tensor("doc_ids", doc_ids, f"({b}, {n})")
    if tuple(ids.shape) != (b, n):
        raise ValueError(f"doc_ids must have shape ({b}, {n}), got {tuple(ids.shape)}")
    ids = ids.to(device=device, dtype=torch.long)
    real = ids >= 0
    cols = torch.arange(n, device=device)
    starts_run = torch.ones_like(real)
    starts_run[:, 1:] = ids[:, 1:] != ids[:, :-1]
    if check and ids.numel() and not torch.compiler.is_compiling():
        _check_contiguous(ids, starts_run & real, cols)
    first = torch.where(starts_run, cols, 0).cummax(-1).values  # column where the run begins
    return PackedDocuments(
        ids=torch.where(real, ids, -1), positions=torch.where(real, cols - first, 0)
    )


def _check_contiguous(ids: Tensor, run_starts: Tensor, cols: Tensor) -> None:
    """Every document id must begin one run only (a document is one contiguous stretch)."""
    firsts = torch.where(run_starts, ids, -1 - cols)  # a unique negative where no run begins
    ordered = firsts.sort(-1).values
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if bool(repeated.any()):
        row, col = (int(v) for v in repeated.nonzero()[0])
        raise ValueError(
            "doc_ids: each document must be one contiguous run of equal ids (negative ids mark "
            f"padding), but row {row} has document {int(ordered[row, col + 1])} in more than one "
            "run"
        )
