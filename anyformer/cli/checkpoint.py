"""Run folders and their checkpoints, written so that a crash never leaves a broken one.

A run folder holds ``run.json`` (the resolved configuration), ``log.jsonl``, ``loss.png`` and
``checkpoints/step_NNNNNNN/``. A checkpoint is a model folder (``config.json`` +
``model.safetensors``, see :mod:`anyformer.serialization`) plus ``trainer_state.pt``
(optimizer, scheduler, RNG and data-position state; loads with ``weights_only=True``) and
``train_config.json``. It is written into a hidden temporary folder and renamed into place,
so a folder under a ``step_*`` name is always complete; leftovers of an interrupted write are
removed by the next run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..serialization import (
    CONFIG_NAME,
    atomic_write,
    atomic_write_text,
    make_temp_dir,
    save_pretrained,
)
from .errors import CLIError

__all__ = [
    "STATE_NAME",
    "TRAIN_CONFIG_NAME",
    "clean_temporaries",
    "list_checkpoints",
    "load_state",
    "resolve_model_dir",
    "run_dir_of",
    "write_checkpoint",
]

CHECKPOINTS = "checkpoints"
STATE_NAME = "trainer_state.pt"
TRAIN_CONFIG_NAME = "train_config.json"
RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
PLOT_FILE = "loss.png"
LATEST = "latest"
DELAY_ENV = "ANYFORMER_CHECKPOINT_DELAY"
"""Test hook: seconds to sleep after each file of a checkpoint (widens the write window)."""

_STEP = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` optimizer steps."""
    return f"step_{step:07d}"


def _delay() -> None:
    seconds = float(os.environ.get(DELAY_ENV, "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as (step, folder)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP.match(entry.name)
        if match and entry.is_dir() and (entry / STATE_NAME).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def clean_temporaries(run_dir: str | os.PathLike) -> None:
    """Remove what interrupted checkpoint writes and deletions left behind."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith("."):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()


def _remove(folder: Path) -> None:
    """Delete a checkpoint: rename it out of the step_* names first, so no half is ever seen."""
    trash = folder.with_name(f".del-{folder.name}-{os.getpid()}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def write_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    train_config: dict[str, Any],
    keep: int,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then prune to the newest ``keep`` (0: all)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = make_temp_dir(root, f".tmp-{final.name}-")
    try:
        save_pretrained(model, tmp)
        _delay()
        atomic_write(tmp / STATE_NAME, lambda path: torch.save(state, path))
        _delay()
        atomic_write_text(tmp / TRAIN_CONFIG_NAME, json.dumps(train_config, indent=2) + "\n")
        _delay()
        if final.exists():
            _remove(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            _remove(old)
    return final


def load_state(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The trainer state of a checkpoint (``torch.load(weights_only=True)``)."""
    file = Path(checkpoint) / STATE_NAME
    if not file.is_file():
        raise CLIError(f"{checkpoint} is not a training checkpoint (no {STATE_NAME})")
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CLIError(f"{file}: corrupt or unreadable ({e})") from e


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint folder belongs to (None for a stand-alone model folder)."""
    if checkpoint.parent.name == CHECKPOINTS and (checkpoint.parent.parent / RUN_FILE).exists():
        return checkpoint.parent.parent
    return None


def _follow_latest(path: Path) -> Path:
    """``runs/latest`` is a symlink, or (where links are not allowed) a file naming the run."""
    if path.is_file() and path.name == LATEST:
        return (path.parent / path.read_text(encoding="utf-8").strip()).resolve()
    return path


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model folder from a model/checkpoint folder, or a run folder's newest checkpoint."""
    p = _follow_latest(Path(path))
    if not p.exists():
        raise CLIError(f"{str(path)!r} does not exist")
    if not p.is_dir():
        raise CLIError(f"{str(path)!r} is not a folder (expected a run or model folder)")
    if (p / CONFIG_NAME).is_file():
        return p
    checkpoints = list_checkpoints(p)
    if checkpoints:
        return checkpoints[-1][1]
    if (p / RUN_FILE).is_file():
        raise CLIError(f"run folder {str(path)!r} has no complete checkpoint yet")
    raise CLIError(f"{str(path)!r} is neither a run folder nor a model folder (no {CONFIG_NAME})")


def point_latest(run_dir: Path) -> None:
    """Make ``<parent>/latest`` point at ``run_dir`` (never replacing a real file or folder)."""
    link = run_dir.parent / LATEST
    if link.exists() and not link.is_symlink() and not link.is_file():
        return
    if link.is_file() and not link.is_symlink():
        atomic_write_text(link, run_dir.name + "\n")
        return
    tmp = run_dir.parent / f".{LATEST}-{os.getpid()}"
    try:
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(run_dir.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        atomic_write_text(link, run_dir.name + "\n")
