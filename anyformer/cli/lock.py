"""One writer per run folder: ``.anyformer.lock``, holding the writer's pid and host.

The lock is ``fcntl.flock`` on that file (the kernel drops it when the process dies, even by
SIGKILL); the file's text names the holder for the error message. A lock file left by a
process that is gone (no flock on it) is taken over, saying so. Where ``fcntl`` is missing the
file is created with ``O_CREAT | O_EXCL`` and a lock of a dead pid on this host is stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .errors import CLIError

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".anyformer.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _holder_text() -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": stamp}) + "\n"


def _parse(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if "pid" not in holder:
        return "an unknown process"
    since = f", since {holder['since']}" if holder.get("since") else ""
    return f"pid {holder['pid']} on {holder.get('host', '?')}{since}"


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace")


class RunLock:
    """The exclusive lock of a run folder; ``acquire`` raises CLIError naming the holder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self.fd: int | None = None
        self.took_over: str | None = None

    def _busy(self, holder: dict[str, Any]) -> CLIError:
        return CLIError(
            f"run folder '{self.folder}' is in use by another anyformer train "
            f"({_describe(holder)}); wait for it to end, or stop it",
            exit_code=1,
        )

    def acquire(self) -> None:
        """Take the lock (``took_over`` then names a dead holder whose lock was stale)."""
        if fcntl is None:  # pragma: no cover
            return self._acquire_exclusive()
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _parse(_read_fd(fd))
                os.close(fd)
                raise self._busy(holder) from None
            try:  # the file may have been released and removed since we opened it
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._take(fd, _parse(_read_fd(fd)))
            return None
        raise CLIError(f"could not lock run folder '{self.folder}'", exit_code=1)

    def _take(self, fd: int, old: dict[str, Any]) -> None:
        if old.get("pid") not in (None, os.getpid()):
            self.took_over = _describe(old)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, _holder_text().encode())
        os.fsync(fd)
        self.fd = fd

    def _acquire_exclusive(self) -> None:  # pragma: no cover - platforms without fcntl
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _parse(self.path.read_text(encoding="utf-8", errors="replace"))
                stale = holder.get("host") == socket.gethostname() and not _pid_alive(
                    holder.get("pid")
                )
                if not stale:
                    raise self._busy(holder) from None
                self.path.unlink(missing_ok=True)
                self.took_over = _describe(holder)
                continue
            self._take(fd, {})
            return
        raise CLIError(f"could not lock run folder '{self.folder}'", exit_code=1)

    def release(self) -> None:
        """Remove the lock file and drop the lock (safe to call twice)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
