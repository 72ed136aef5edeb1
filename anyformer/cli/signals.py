"""Signals during ``anyformer train``: Ctrl-C and SIGTERM ask the loop to save and stop; a second
Ctrl-C stops at once; SIGTERM outside the loop exits through ``finally`` blocks."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["install_stop_handlers", "restore_handlers", "sigterm_exits"]


def install_stop_handlers(trainer: Trainer) -> dict[int, Any]:
    """Ctrl-C (and SIGTERM) ask the loop to save and stop; a second Ctrl-C stops at once."""

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    old: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            old[sig] = signal.signal(sig, handler)
    return old


def restore_handlers(old: dict[int, Any]) -> None:
    """Put back the handlers :func:`install_stop_handlers` replaced."""
    for sig, handler in old.items():
        signal.signal(sig, handler)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM outside the training loop (whose handler saves first) exits through ``finally``."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
