"""What a run wrote: its manifest, its temporary names, and writes that are atomic.

A run folder is ours only if it holds ``manifest.json`` with ``"kind": "anyformer-run"``; the
manifest lists the checkpoint folders and the files the run created. Pruning, replacing and
clean-up touch only those, or temporaries named ``.anyformer-tmp-<pid>-...`` (the only names
this module generates), so nothing a user put into a run folder is ever removed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..serialization import fsync_dir
from .errors import CLIError

__all__ = [
    "MANIFEST_NAME",
    "TEMP_PREFIX",
    "Manifest",
    "atomic_save",
    "atomic_write_text",
    "clean_temporaries",
    "is_temporary",
    "make_temp_dir",
    "temp_name",
]

MANIFEST_NAME = "manifest.json"
KIND = "anyformer-run"
TEMP_PREFIX = ".anyformer-tmp-"
_TEMP = re.compile(r"^\.anyformer-tmp-\d+-[0-9a-f]{8}-")


def temp_name(label: str) -> str:
    """A temporary name only this process generates: ``.anyformer-tmp-<pid>-<hex>-<label>``."""
    return f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{label}"


def is_temporary(name: str) -> bool:
    """True for names made by :func:`temp_name` (in any process)."""
    return _TEMP.match(name) is not None


def atomic_save(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary beside ``path``, flush it, rename it onto ``path``."""
    tmp = path.with_name(temp_name(path.name))
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, through a temporary of ours."""
    atomic_save(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def make_temp_dir(parent: Path, label: str) -> Path:
    """A new folder ``parent/.anyformer-tmp-<pid>-<hex>-<label>`` (usual permissions)."""
    path = parent / temp_name(label)
    path.mkdir()
    return path


def clean_temporaries(folder: Path, before: float) -> list[Path]:
    """Remove our temporaries in ``folder`` last changed before ``before`` (a time stamp).

    Only names made by :func:`temp_name` are touched; hidden folders such as ``.git`` stay.
    """
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not is_temporary(entry.name):
            continue
        try:
            if entry.lstat().st_mtime >= before:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


class Manifest:
    """``manifest.json`` of a run folder: the checkpoints and files the run created."""

    def __init__(self, run_dir: Path, checkpoints: list[str], files: list[str]) -> None:
        self.run_dir = run_dir
        self.checkpoints = checkpoints
        self.files = files

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @classmethod
    def read(cls, run_dir: Path) -> Manifest | None:
        """The manifest of ``run_dir``; None when there is none or it is not ours."""
        file = run_dir / MANIFEST_NAME
        if not file.is_file():
            return None
        try:
            data: Any = json.loads(file.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as e:
            raise CLIError(f"{file}: unreadable run manifest ({e})", exit_code=1) from e
        if not isinstance(data, dict) or data.get("kind") != KIND:
            return None
        checkpoints, files = data.get("checkpoints"), data.get("files")
        if not _names(checkpoints) or not _names(files):
            raise CLIError(f"{file}: corrupt run manifest (lists of names expected)", exit_code=1)
        return cls(run_dir, list(checkpoints or []), list(files or []))

    def write(self) -> None:
        data = {"kind": KIND, "checkpoints": sorted(set(self.checkpoints)), "files": self.files}
        atomic_write_text(self.path, json.dumps(data, indent=2) + "\n")

    def add_checkpoint(self, name: str) -> None:
        if name not in self.checkpoints:
            self.checkpoints.append(name)
            self.write()

    def remove_checkpoint(self, name: str) -> None:
        if name in self.checkpoints:
            self.checkpoints.remove(name)
            self.write()

    def add_file(self, name: str) -> None:
        if name not in self.files:
            self.files.append(name)
            self.write()

    def owns_file(self, name: str) -> bool:
        """True when the run wrote ``name`` (or it does not exist, so writing loses nothing)."""
        return name in self.files or not os.path.lexists(self.run_dir / name)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) and v and "/" not in v and "\\" not in v and v not in (".", "..")
        for v in value
    )
