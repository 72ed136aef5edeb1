"""Byte-level text from the user's files: a text file, a folder of text files, or .gz/.bz2.

The bytes are concatenated in a fixed order (a folder's files sorted by relative path, each
ending in a newline), so the train/validation split, the last ``val_fraction`` of the bytes,
is deterministic.

Only regular files are read (a symlink is followed only when it ends at a regular file; FIFOs,
devices and sockets are skipped in a folder and refused as ``path``), and reading stops at
``max_bytes``: a file is read in chunks, never past what is still wanted. A file that looks
binary (a NUL byte in its first 8 KiB, after decompression) is not text: a folder skips it, and
the same file given alone is refused, so a file counts the same either way.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["load_text_splits", "read_text_bytes", "split_bytes"]

# suffix -> a decompressing reader over the binary file
_COMPRESSED: dict[str, Callable[[io.BufferedIOBase], io.BufferedIOBase]] = {
    ".gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    ".bz2": lambda raw: bz2.BZ2File(raw, mode="rb"),
}
_CHUNK = 1 << 20
SNIFF = 8192
"""A file whose first ``SNIFF`` bytes hold a NUL byte is binary."""


class _NotRegular(Exception):
    """The path is not a regular file (a FIFO, a device, a socket, a dangling link)."""


@contextmanager
def _open_regular(path: Path) -> Iterator[io.BufferedIOBase]:
    """Open ``path`` for reading only if it is a regular file, without blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as e:
        raise _NotRegular(str(path)) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _NotRegular(str(path))
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as raw:
        opener = _COMPRESSED.get(path.suffix.lower())
        if opener is None:
            yield raw
        else:
            with opener(raw) as f:
                yield f


def _read_upto(f: io.BufferedIOBase, limit: int | None) -> bytes:
    """At most ``limit`` bytes of ``f`` (all of it for None), read in chunks."""
    parts, total = [], 0
    while limit is None or total < limit:
        chunk = f.read(_CHUNK if limit is None else min(_CHUNK, limit - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def _read_file(path: Path, limit: int | None) -> bytes:
    """Up to ``limit`` bytes of a regular file (decompressed); at least its first SNIFF bytes."""
    want = None if limit is None else max(limit, SNIFF)
    try:
        with _open_regular(path) as f:
            return _read_upto(f, want)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read data file {path}: {e}") from e


def _folder_files(folder: Path) -> list[Path]:
    """Non-hidden regular files under ``folder`` (links to regular files too), sorted."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in names:
            path = Path(root) / n
            if not n.startswith(".") and _is_regular(path):
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # follows a symlink to its end
    except OSError:
        return False


def _is_binary(data: bytes) -> bool:
    return b"\x00" in data[:SNIFF]


def _read_single(p: Path, max_bytes: int | None) -> bytes:
    try:
        data = _read_file(p, max_bytes)
    except _NotRegular:
        raise ValueError(
            f"data path {str(p)!r} is not a regular file (a FIFO, device or socket)"
        ) from None
    if _is_binary(data):
        raise ValueError(
            f"data file {str(p)!r} looks binary (a NUL byte in its first {SNIFF} bytes); "
            "give text (a folder skips such files)"
        )
    return data


def _read_folder(p: Path, max_bytes: int | None) -> bytes:
    parts, total = [], 0
    for f in _folder_files(p):
        if max_bytes is not None and total >= max_bytes:
            break
        try:
            chunk = _read_file(f, None if max_bytes is None else max_bytes - total)
        except _NotRegular:  # replaced since it was listed
            continue
        if _is_binary(chunk):
            continue
        chunk = chunk if chunk.endswith(b"\n") else chunk + b"\n"
        parts.append(chunk)
        total += len(chunk)
    if not parts:
        raise ValueError(f"data folder {str(p)!r} holds no text files")
    return b"".join(parts)


def read_text_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of a text file, a .gz/.bz2 file, or every text file of a folder (sorted).

    At most ``max_bytes`` bytes are returned, and not much more is ever read.
    """
    p = Path(path)
    if not os.path.lexists(p):
        raise ValueError(f"data path {str(path)!r} does not exist")
    if p.is_dir():
        data = _read_folder(p, max_bytes)
    elif p.exists():
        data = _read_single(p, max_bytes)
    else:
        raise ValueError(f"data path {str(path)!r} is a link to nothing")
    if max_bytes is not None:
        data = data[:max_bytes]
    return data


def split_bytes(data: bytes, val_fraction: float, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (train, val) uint8 tensors: validation is the last ``val_fraction`` of ``data``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    n_val = round(len(data) * val_fraction)
    if n_val < 1 or n_val >= len(data):
        raise ValueError(
            f"{source}: {len(data)} bytes are too few to split with val_fraction={val_fraction}"
        )
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return tokens[: len(data) - n_val].clone(), tokens[len(data) - n_val :].clone()


def load_text_splits(
    path: str | os.PathLike, val_fraction: float = 0.05, max_bytes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``path`` (see :func:`read_text_bytes`) and split it into train and validation bytes."""
    return split_bytes(read_text_bytes(path, max_bytes), val_fraction, str(path))
