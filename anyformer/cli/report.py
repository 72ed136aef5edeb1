"""What ``anyformer train`` tells the user: the run's description, evaluations, the final result
and sample, the next commands to run (as runnable from the user's shell), and its failures."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import LOG_FILE, PLOT_FILE, list_checkpoints
from .errors import CLIError
from .hints import command, shell_path
from .model import net_of
from .rundir import Claim
from .runlog import plot_losses, read_log
from .sampling import SamplingOptions, stream_bytes

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "describe",
    "format_time",
    "is_oom",
    "oom_error",
    "plot",
    "report",
    "say",
    "stopped_at_once",
]


def format_time(seconds: float) -> str:
    """``3m17s``, or ``42s`` under a minute."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def say(trainer: Trainer, message: str, bar: Any = None) -> None:
    """Print a line unless quiet (through the progress bar while it is drawn)."""
    if trainer.quiet:
        return
    if bar is not None:
        bar.write(message)
    else:
        print(message, flush=True)


def describe(trainer: Trainer) -> str:
    """Two lines: the model and data, then what the training will do, where."""
    c = trainer.config
    m = net_of(trainer.lm).config_dict()["attn_layers"]
    shape = f"dim {m['dim']}, depth {m['depth']}, heads {m['heads']}"
    procs = f"{trainer.dist.world} processes" if trainer.dist.enabled else "1 process"
    n = torch.get_num_threads()
    threads = f", {n} thread{'s' if n > 1 else ''}" if trainer.device.type == "cpu" else ""
    return (
        f"model: {trainer.num_params:,} parameters ({shape}) | data: {trainer.data.source}, "
        f"{trainer.data.train.numel():,} train / {trainer.data.val.numel():,} validation bytes\n"
        f"training: {c.steps} steps x {c.batch_size} sequences x {c.seq_len} bytes on "
        f"{trainer.device} ({procs}{threads})"
    )


def _final_sample(trainer: Trainer) -> None:
    c = trainer.config
    if trainer.quiet or c.sample_len == 0 or not trainer.dist.is_main:
        return
    options = SamplingOptions(c.temperature, c.top_k, c.top_p, c.min_p)
    filters = ", ".join(
        f"{name} {value}"
        for name, value in (("top-k", c.top_k), ("top-p", c.top_p), ("min-p", c.min_p))
        if value is not None
    )
    print(
        f"--- sample: {c.sample_len} bytes after the prompt {c.prompt!r} "
        f"(temperature {c.temperature}{', ' + filters if filters else ''}, seed {c.seed}) ---"
    )
    lm = trainer.lm
    if trainer.dist.enabled and c.fsdp:  # sharded parameters: sample from the saved model
        from ..serialization import load_pretrained

        lm = load_pretrained(list_checkpoints(trainer.run_dir)[-1][1], device=trainer.device)
    sys.stdout.write(c.prompt)
    stream_bytes(
        lm, c.prompt.encode(), c.sample_len, options, c.seed,
        write=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()),
    )  # fmt: skip
    print("\n---", flush=True)


def report(trainer: Trainer) -> None:
    """The end of a finished run: final score, sample, run folder, how to sample again."""
    records = read_log(trainer.run_dir / LOG_FILE)
    evals = [r for r in records if r.get("event") == "eval" and "val_bpb" in r]
    final = evals[-1]["val_bpb"] if evals else float("nan")
    print(
        f"final validation bits per byte: {final:.3f} after {trainer.step} steps "
        f"({format_time(trainer.train_seconds)} of training)",
        flush=True,
    )
    _final_sample(trainer)
    print(f"run folder: {trainer.run_dir}", flush=True)
    if not trainer.quiet:
        print(
            f"sample again: {command()} generate {shell_path(trainer.run_dir)} "
            f"--prompt {shlex.quote(trainer.config.prompt)}",
            flush=True,
        )


def interrupted(trainer: Trainer) -> str:
    """After Ctrl-C saved: where the checkpoint is and the command that continues."""
    path = list_checkpoints(trainer.run_dir)[-1][1]
    return (
        f"interrupted at step {trainer.step}: checkpoint {path}; continue with "
        f"{command()} train --resume {shell_path(trainer.run_dir)}"
    )


def stopped_at_once(trainer: Trainer) -> str:
    """After a second Ctrl-C: what was lost and which checkpoint a resume starts from."""
    found = list_checkpoints(trainer.run_dir)
    resume = f"{command()} train --resume {shell_path(trainer.run_dir)}"
    if not found:
        return (
            f"stopped at once at step {trainer.step}, before the first checkpoint: "
            f"{resume} starts the run again from step 0"
        )
    step, path = found[-1]
    return (
        f"stopped at once at step {trainer.step} without saving: {resume} continues from "
        f"the checkpoint of step {step} ({path})"
    )


def plot(trainer: Trainer, claim: Claim) -> None:
    """``loss.png``, unless a file of that name is there that the run did not write."""
    if not claim.manifest.owns_file(PLOT_FILE):
        say(trainer, f"not writing {PLOT_FILE}: a file of that name, not ours, is there")
        return
    claim.manifest.add_file(PLOT_FILE)
    title = f"{trainer.num_params:,} parameters, {trainer.step} steps"
    plot_losses(trainer.run_dir / LOG_FILE, trainer.run_dir / PLOT_FILE, title)


def oom_error(trainer: Trainer) -> CLIError:
    """Out of memory, as one line naming the setting to try."""
    c = trainer.config
    per_rank = c.batch_size // trainer.dist.world
    micro = per_rank // c.grad_accum
    tip = (
        f"try grad_accum={c.grad_accum * 2} (same batch, half the memory)"
        if micro > 1 and micro % 2 == 0
        else f"try batch_size={max(1, c.batch_size // 2)} or a smaller seq_len"
    )
    return CLIError(
        f"out of memory on {trainer.device} with batch_size={c.batch_size} "
        f"(micro-batch {micro} x seq_len {c.seq_len}): {tip}",
        exit_code=1,
    )


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is the device (or the host) running out of memory."""
    if isinstance(error, torch.cuda.OutOfMemoryError):  # torch.OutOfMemoryError is the same class
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )
