"""The run's JSONL log (one object per line) and its loss plot.

Lines are ``{"event": "train", "step", "loss", "bpb", "lr", "tokens", "time"}`` after every
optimizer step and ``{"event": "eval", "step", "val_loss", "val_bpb", "time"}`` after every
evaluation (losses in nats, bits per byte = loss / ln 2).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, TextIO

from .manifest import atomic_write_text, temp_name

__all__ = ["RunLog", "plot_losses", "read_log"]

LN2 = math.log(2.0)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The log's records; a line cut short by a crash, or any other garbage, is skipped.

    A record is kept only when it is an object whose ``step`` is an int (and each of its
    other numbers a number), so later code can trust what it reads.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # also UnicodeDecodeError
            continue
        if _valid(record):
            records.append(record)
    return records


_NUMBERS = ("loss", "bpb", "lr", "tokens", "time", "val_loss", "val_bpb")


def _valid(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return False
    return all(
        isinstance(record[k], (int, float)) and not isinstance(record[k], bool)
        for k in _NUMBERS
        if k in record
    )


class RunLog:
    """Appends records to ``log.jsonl``; ``enabled=False`` (ranks > 0) writes nothing."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self._file: TextIO | None = None

    def truncate_after(self, step: int) -> None:
        """Keep only records up to ``step`` (resuming from a checkpoint taken at ``step``)."""
        if not self.enabled:
            return
        kept = [r for r in read_log(self.path) if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def plot_losses(log_path: Path, out_path: Path, title: str = "") -> Path | None:
    """Draw training (raw and smoothed) and validation bits per byte; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    records = read_log(log_path)
    train = [(r["step"], r["bpb"]) for r in records if r.get("event") == "train" and "bpb" in r]
    val = [
        (r["step"], r["val_bpb"]) for r in records if r.get("event") == "eval" and "val_bpb" in r
    ]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        steps, bpb = zip(*train)
        ax.plot(steps, bpb, color="tab:blue", alpha=0.25, linewidth=0.8)
        smooth, avg = [], None
        for value in bpb:
            avg = value if avg is None else 0.9 * avg + 0.1 * value
            smooth.append(avg)
        ax.plot(steps, smooth, color="tab:blue", label="train (smoothed)")
    if val:
        steps, bpb = zip(*val)
        ax.plot(steps, bpb, "o-", color="tab:orange", label="validation")
        ax.annotate(
            f"{bpb[-1]:.3f}", (steps[-1], bpb[-1]), textcoords="offset points", xytext=(4, 6)
        )
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    if train or val:
        top = max(b for _, b in [*train, *val])
        ax.set_ylim(bottom=0, top=min(top, 8.5) * 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_path.with_name(temp_name(out_path.name))
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path
