"""The commands the tool prints for the user to run next, written as the user can run them.

After ``scripts/main.sh`` the ``anyformer`` script is in ``.venv/bin``, which is not on PATH; a
printed ``anyformer generate ...`` would then fail. :func:`command` names the command the way
that works from the user's shell: ``anyformer`` when PATH finds this installation's script, else
the script's path (``.venv/bin/anyformer``), else ``<python> -m anyformer``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

__all__ = ["command", "shell_path"]

SCRIPT = "anyformer"


def shell_path(path: str | os.PathLike) -> str:
    """``path`` for a shell: relative to the working folder when inside it, quoted if needed."""
    text = os.fspath(path)
    if os.path.isabs(text):
        try:
            relative = os.path.relpath(text)
        except ValueError:  # another drive (Windows)
            relative = text
        if not relative.startswith(os.pardir):
            text = relative
    return shlex.quote(text)


def _same_file(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def command() -> str:
    """How the user runs this installation's ``anyformer`` from the current folder."""
    script = Path(sys.executable).parent / SCRIPT  # this environment's console script
    found = shutil.which(SCRIPT)
    if found is not None and _same_file(found, script):
        return SCRIPT
    if script.is_file() and os.access(script, os.X_OK):
        return shell_path(script)
    return f"{shell_path(sys.executable)} -m anyformer"
