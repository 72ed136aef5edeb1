"""Start ``anyformer train`` the way it runs fast: with ``OMP_WAIT_POLICY=PASSIVE``.

torch's CPU threads come from OpenMP, which reads ``OMP_WAIT_POLICY`` once, when torch is
imported; by default an idle thread spins waiting for work, and on a machine whose cores are
also busy with other work that made each step several times slower. The setting must be in the
environment before torch starts, and importing anything in the ``anyformer`` package imports
torch. Two parts, so that every way in gets it and the usual one pays nothing:

- the console script's entry, :mod:`anyformer_cli`, is a torch-free module that sets the
  variable before it imports the command (no second start);
- any other way in (``python -m anyformer``, ``torchrun -m anyformer``, an older installed
  script) reaches :func:`reexec_passive`, which re-executes the command once, at once, with the
  variable set: robust whatever was imported first, at the cost of one more interpreter start.

A value the user set (any value) is kept, and nothing re-executes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["WAIT_POLICY", "passive_command", "reexec_passive"]

WAIT_POLICY = "OMP_WAIT_POLICY"
_NO_WORK = {"-h", "--help", "--list-keys", "--version"}


def passive_command(argv: Sequence[str]) -> list[str] | None:
    """The command line that runs ``anyformer argv`` again with the same package, or None when
    no re-execution is wanted (the variable set, not ``train``, only help, not POSIX)."""
    if WAIT_POLICY in os.environ or os.name != "posix" or not sys.executable:
        return None
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] != "train" or _NO_WORK.intersection(argv):
        return None
    import anyformer

    root = str(Path(anyformer.__file__).resolve().parent.parent)  # this very package, first
    code = f"import sys; sys.path.insert(0, {root!r}); from anyformer.cli.main import cli; cli()"
    return [sys.executable, "-c", code, *argv]


def reexec_passive(argv: Sequence[str]) -> None:
    """Replace this process with ``anyformer argv`` under ``OMP_WAIT_POLICY=PASSIVE`` (returns
    only when no re-execution is wanted)."""
    command = passive_command(argv)
    if command is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, {**os.environ, WAIT_POLICY: "PASSIVE"})
