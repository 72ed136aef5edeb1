"""The layout of a run folder of ``anyformer train``, and finding its checkpoints.

A leaf module (no torch, nothing of the library): :func:`anyformer.load_pretrained` uses
:func:`newest_checkpoint` to load a run folder, and :mod:`.checkpoint` builds on it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["CHECKPOINTS", "MODEL_CONFIG", "STATE_NAME", "list_checkpoints", "newest_checkpoint"]

CHECKPOINTS = "checkpoints"
STATE_NAME = "trainer_state.pt"
MODEL_CONFIG = "config.json"
"""A model folder's configuration file (``anyformer.serialization.CONFIG_NAME``)."""
STEP = re.compile(r"^step_(\d+)$")


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as (step, folder)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = STEP.match(entry.name)
        if match and entry.is_dir() and (entry / STATE_NAME).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def newest_checkpoint(path: str | os.PathLike) -> Path:
    """For :func:`anyformer.load_pretrained`: a run folder of ``anyformer train`` (no model of
    its own, complete checkpoints inside) as its newest checkpoint; any other path unchanged."""
    p = Path(path)
    if not p.is_dir() or (p / MODEL_CONFIG).is_file():
        return p
    found = list_checkpoints(p)
    return found[-1][1] if found else p
