"""Run folders and their checkpoints, written so that a crash never leaves a broken one.

A run folder holds ``run.json`` (the resolved configuration), ``log.jsonl``, ``loss.png`` and
``checkpoints/step_NNNNNNN/``. A checkpoint is a model folder (``config.json`` +
``model.safetensors``, see :mod:`anyformer.serialization`) plus ``trainer_state.pt``
(optimizer, scheduler, RNG and data-position state; loads with ``weights_only=True``) and
``train_config.json``. It is written into a temporary folder of ours (``.anyformer-tmp-*``) and renamed into place, so a
folder under a ``step_*`` name is always complete; leftovers of an interrupted write are removed
by the next run. Only checkpoints listed in the run's manifest are ever replaced or pruned.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..serialization import CONFIG_NAME, load_pretrained, read_config, save_pretrained
from .errors import CLIError
from .layout import CHECKPOINTS, STATE_NAME, list_checkpoints, newest_checkpoint
from .manifest import Manifest, atomic_save, atomic_write_text, make_temp_dir, temp_name

__all__ = [
    "STATE_NAME",
    "TRAIN_CONFIG_NAME",
    "checkpoint_problem",
    "list_checkpoints",
    "load_state",
    "newest_checkpoint",
    "resolve_model_dir",
    "resume_checkpoint",
    "run_dir_of",
    "write_checkpoint",
]

TRAIN_CONFIG_NAME = "train_config.json"
RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
PLOT_FILE = "loss.png"
LATEST = "latest"
DELAY_ENV = "ANYFORMER_CHECKPOINT_DELAY"
"""Test hook: seconds to sleep after each file of a checkpoint (widens the write window)."""

STATE_KEYS = (
    "step",
    "tokens",
    "train_seconds",
    "optimizer",
    "scheduler",
    "scaler",
    "sampler",
    "rng",
)


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` optimizer steps."""
    return f"step_{step:07d}"


def _delay() -> None:
    seconds = float(os.environ.get(DELAY_ENV, "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


def _remove(folder: Path, manifest: Manifest) -> None:
    """Delete a checkpoint of ours: rename it to a temporary first, so no half is ever seen."""
    trash = folder.with_name(temp_name(folder.name))
    os.rename(folder, trash)
    manifest.remove_checkpoint(folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def _write_folder(folder: Path, model: nn.Module, state: dict[str, Any], config: dict) -> None:
    save_pretrained(model, folder)  # a new folder: whatever it writes stays inside ``folder``
    _delay()
    atomic_save(folder / STATE_NAME, lambda path: torch.save(state, path))
    _delay()
    atomic_write_text(folder / TRAIN_CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    _delay()


def write_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    train_config: dict[str, Any],
    keep: int,
    manifest: Manifest,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then prune ours to the newest ``keep``.

    Only checkpoints in ``manifest`` (those this run wrote) are replaced or pruned; the write
    goes to a temporary folder of ours, renamed into place when complete.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    if os.path.lexists(final) and final.name not in manifest.checkpoints:
        raise CLIError(f"'{final}' was not written by this run: not replacing it", exit_code=1)
    staging = make_temp_dir(root, final.name)
    try:
        _write_folder(staging / final.name, model, state, train_config)
        manifest.add_checkpoint(final.name)  # listed before it exists under its name
        if os.path.lexists(final):
            _remove(final, manifest)
            manifest.add_checkpoint(final.name)
        os.rename(staging / final.name, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if keep > 0:
        ours = [p for _, p in list_checkpoints(run_dir) if p.name in manifest.checkpoints]
        for old in ours[:-keep]:
            _remove(old, manifest)
    return final


def load_state(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The trainer state of a checkpoint (``torch.load(weights_only=True)``)."""
    file = Path(checkpoint) / STATE_NAME
    if not file.is_file():
        raise CLIError(f"{checkpoint} is not a training checkpoint (no {STATE_NAME})")
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CLIError(f"{file}: corrupt or unreadable ({_short(e)})", exit_code=1) from e
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CLIError(f"{file}: corrupt trainer state (no {missing[0]!r})", exit_code=1)
    return state


def _short(error: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (None: it is intact).

    Reads all of it: ``config.json``, the weights, ``trainer_state.pt`` and
    ``train_config.json``; any failure is returned as one line.
    """
    try:
        read_config(checkpoint)
        load_pretrained(checkpoint, device="cpu")
        load_state(checkpoint)
        data = json.loads((checkpoint / TRAIN_CONFIG_NAME).read_bytes().decode("utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("train"), dict):
            return f"{TRAIN_CONFIG_NAME}: no 'train' table"
    except CLIError as e:
        return str(e)
    except Exception as e:  # a corrupt file fails in many ways (safetensors, json, torch)
        return _short(e)
    return None


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint folder belongs to (None for a stand-alone model folder)."""
    if checkpoint.parent.name == CHECKPOINTS and (checkpoint.parent.parent / RUN_FILE).exists():
        return checkpoint.parent.parent
    return None


def _follow_latest(path: Path) -> Path:
    """``runs/latest`` is a symlink, or (where links are not allowed) a file naming the run."""
    if path.is_file() and path.name == LATEST:
        try:
            with open(path, "rb") as f:
                name = f.read(4096).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"'{path}' is neither a run folder nor a link to one ({e})") from e
        return (path.parent / name).resolve()
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


def _warn(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"anyformer: {message}", file=sys.stderr, flush=True)


def resume_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint to resume from: the one named, or a run folder's newest intact one.

    A corrupt newest checkpoint of a run folder is skipped, saying so on stderr; a corrupt
    checkpoint named explicitly, or a run with no intact one, is a one-line error.
    """
    p = _follow_latest(Path(path))
    if p.is_dir() and (p / CONFIG_NAME).is_file():
        problem = checkpoint_problem(p)
        if problem is None:
            return p
        raise CLIError(f"cannot resume from '{p}': {problem}", exit_code=1)
    resolve_model_dir(path)  # the one-line errors for a path that is no run at all
    skipped: list[tuple[Path, str]] = []
    for _, checkpoint in reversed(list_checkpoints(p)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            for bad, why in skipped:
                _warn(f"skipping corrupt checkpoint '{bad}' ({why}); resuming from '{checkpoint}'")
            return checkpoint
        skipped.append((checkpoint, problem))
    bad, why = skipped[0]
    raise CLIError(f"run folder '{path}' has no intact checkpoint ('{bad}': {why})", exit_code=1)
