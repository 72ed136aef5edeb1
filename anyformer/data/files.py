"""Byte-level text from the user's files: a text file, a folder of text files, or .gz/.bz2.

The bytes are concatenated in a fixed order (a folder's files sorted by relative path, each
ending in a newline), so the train/validation split, the last ``val_fraction`` of the bytes,
is deterministic.
"""

from __future__ import annotations

import bz2
import gzip
import os
from pathlib import Path

import torch

__all__ = ["load_text_splits", "read_text_bytes", "split_bytes"]

_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}


def _read_file(path: Path) -> bytes:
    opener = _COMPRESSED.get(path.suffix.lower())
    try:
        if opener is None:
            return path.read_bytes()
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read data file {path}: {e}") from e


def _folder_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files under ``folder``, sorted by relative path."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in names if not n.startswith("."))
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _is_binary(data: bytes) -> bool:
    return b"\x00" in data[:8192]


def read_text_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of a text file, a .gz/.bz2 file, or every text file of a folder (sorted).

    Files of a folder that look binary (a NUL byte in their first 8 KiB) are skipped.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"data path {str(path)!r} does not exist")
    if p.is_file():
        data = _read_file(p)
    elif p.is_dir():
        parts = []
        for f in _folder_files(p):
            chunk = _read_file(f)
            if _is_binary(chunk):
                continue
            parts.append(chunk if chunk.endswith(b"\n") else chunk + b"\n")
        if not parts:
            raise ValueError(f"data folder {str(path)!r} holds no text files")
        data = b"".join(parts)
    else:
        raise ValueError(f"data path {str(path)!r} is neither a file nor a folder")
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
