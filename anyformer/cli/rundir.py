"""Claiming a run folder: refuse folders that are not ours, lock it, clean our leftovers.

``--out`` may name a new folder, an empty one, or (resuming) the run being resumed; a folder
holding anything else, or another run, is refused with one line, before anything is written.
A ``checkpoints/step_*`` folder the run did not write (not in its manifest) is never replaced or
pruned: a run that would write one of those names refuses to start. ``<parent>/latest`` is made
only in a runs folder this tool created (or the default ``runs``), and only a symlink of ours
is ever replaced.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import CLIError
from .hints import command, shell_path
from .lock import LOCK_NAME, RunLock
from .manifest import MANIFEST_NAME, Manifest, clean_temporaries, is_temporary, temp_name

__all__ = ["Claim", "check_target", "claim_run_dir", "new_default_run_dir", "point_latest"]

RUN_FILE = "run.json"
LATEST = "latest"
CHECKPOINTS = "checkpoints"
DEFAULT_RUNS = Path("runs")
_STEP = re.compile(r"^step_(\d+)$")


@dataclass
class Claim:
    """A locked run folder and its manifest (rank 0 only)."""

    run_dir: Path
    lock: RunLock
    manifest: Manifest
    owns_parent: bool

    def release(self) -> None:
        self.lock.release()


def _user_entries(folder: Path) -> list[str]:
    """What is in ``folder`` besides our lock file and our temporaries."""
    return sorted(
        e.name for e in folder.iterdir() if e.name != LOCK_NAME and not is_temporary(e.name)
    )


def is_run(folder: Path) -> bool:
    """A run of ours (manifest), or one written before manifests existed (run.json)."""
    return Manifest.read(folder) is not None or (folder / RUN_FILE).is_file()


def _check_foreign(out: Path) -> None:
    """Refuse a file, or a non-empty folder that is no run of ours, before touching it."""
    if os.path.lexists(out) and not out.is_dir():
        raise CLIError(f"--out '{out}' is a file, not a folder")
    if not out.is_dir():
        return
    entries = _user_entries(out)
    if entries and not is_run(out):
        raise CLIError(
            f"--out '{out}' is a folder that is neither empty nor an anyformer run "
            f"(it holds {entries[0]!r}{' and more' if len(entries) > 1 else ''}); "
            "give a new or empty folder"
        )


def check_target(out: Path, resumed: Path | None) -> None:
    """Raise CLIError unless the run may write into ``out`` (``resumed``: the run resumed)."""
    _check_foreign(out)
    if not out.is_dir():
        return
    if resumed is not None and out.resolve() == resumed.resolve():
        return
    entries = _user_entries(out)
    if not entries or (entries == [MANIFEST_NAME] and _empty_run(out)):
        return
    if resumed is None:  # a run (_check_foreign refused anything else)
        raise CLIError(
            f"'{out}' already holds a run: continue it with {command()} train --resume "
            f"{shell_path(out)}, or start afresh with --out NEW_FOLDER (or without --out, "
            "which makes a new runs/<timestamp>)"
        )
    raise CLIError(
        f"--out '{out}' holds another run: a run resumed from '{resumed}' goes into that run "
        "folder itself or a new or empty one"
    )


def _empty_run(folder: Path) -> bool:
    """Only our manifest, listing nothing written yet (a start refused or killed at once)."""
    manifest = Manifest.read(folder)
    return manifest is not None and not manifest.checkpoints


def new_default_run_dir() -> Path:
    """A new ``runs/<timestamp>[-n]`` folder, created here (so two starts never share one)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    DEFAULT_RUNS.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = DEFAULT_RUNS / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise CLIError(f"cannot create a new run folder under {DEFAULT_RUNS}")  # pragma: no cover


def _foreign_checkpoints(run_dir: Path, manifest: Manifest, after: int) -> list[str]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    names = []
    for entry in root.iterdir():
        match = _STEP.match(entry.name)
        if match and int(match.group(1)) > after and entry.name not in manifest.checkpoints:
            names.append(entry.name)
    return sorted(names)


def _open_manifest(run_dir: Path) -> Manifest:
    """The run's manifest; a new folder, or a run written before manifests, gets one."""
    manifest = Manifest.read(run_dir)
    if manifest is None:  # a run of an older version owns its files, not its checkpoints
        old = [n for n in (RUN_FILE, "log.jsonl", "loss.png") if (run_dir / n).is_file()]
        manifest = Manifest(run_dir, [], old if (run_dir / RUN_FILE).is_file() else [])
        manifest.files.append(MANIFEST_NAME)
        manifest.write()
    return manifest


def claim_run_dir(out: Path, resumed: Path | None, start_step: int, default: bool) -> Claim:
    """Check ``out``, create it if needed, lock it, and clean our leftovers in it."""
    started = time.time()
    if not default:
        _check_foreign(out)  # a user's folder is refused untouched; a run's lock comes first
    owns_parent = default or not out.parent.exists()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    lock.acquire()
    try:
        if not default:
            check_target(out, resumed)  # again, under the lock: another run may have started
        manifest = _open_manifest(out)
        foreign = _foreign_checkpoints(out, manifest, start_step)
        if foreign:
            raise CLIError(
                f"'{out / CHECKPOINTS / foreign[0]}' was not written by this run and would be "
                "replaced by one of its checkpoints: move it away first"
            )
    except BaseException:
        lock.release()
        if created:
            _remove_if_empty(out)
        raise
    if lock.took_over is not None:
        print(
            f"anyformer: taking over the stale lock of '{out}' ({lock.took_over}: "
            "no longer running)",
            file=sys.stderr,
            flush=True,
        )
    for folder in (out, out / CHECKPOINTS):
        clean_temporaries(folder, before=started)
    return Claim(out, lock, manifest, owns_parent)


def _remove_if_empty(folder: Path) -> None:
    try:
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:
        pass


def _our_link(link: Path) -> bool:
    """A relative symlink to a sibling folder that holds one of our runs."""
    if not link.is_symlink():
        return False
    target = os.readlink(link)
    return os.sep not in target and Manifest.read(link.parent / target) is not None


def point_latest(run_dir: Path, owns_parent: bool) -> bool:
    """Make ``<parent>/latest`` a symlink to ``run_dir`` where that is ours to do."""
    run_dir = Path(os.path.realpath(run_dir))  # a run named through a link (runs/latest)
    link = run_dir.parent / LATEST
    if os.path.lexists(link):
        if not _our_link(link):
            return False
    elif not owns_parent:
        return False
    tmp = run_dir.parent / temp_name(LATEST)
    try:
        os.symlink(run_dir.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        if os.path.lexists(tmp):
            tmp.unlink()
        return False
    return True
