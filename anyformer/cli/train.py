"""``anyformer train``: train a byte-level language model, with checkpoints, logs and resume.

With no arguments it trains the ``default`` preset on the built-in corpus into
``runs/<timestamp>`` (``runs/latest`` points at it). Under ``torchrun`` every process trains
its shard of each global batch (DistributedDataParallel, or FSDP2 with ``fsdp=true``); only
rank 0 prints, logs and writes checkpoints.

The steps of a run, each in its own file: :mod:`.plan` (what to do, checked before any work),
:mod:`.trainer` (model, optimizer, one step), :mod:`.loop` (the loop), :mod:`.validation`,
:mod:`.saving` (checkpoints), :mod:`.parallel` (DDP/FSDP2) and :mod:`.report` (what is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from .checkpoint import LOG_FILE, RUN_FILE, run_dir_of
from .config import config_keys
from .distributed import Dist, setup_distributed
from .errors import CLIError
from .loop import TrainingLoop
from .manifest import atomic_write_text
from .model import net_of
from .plan import Plan, check_steps_left, plan_run, start_step
from .report import describe, interrupted, is_oom, oom_error, plot, report, say, stopped_at_once
from .rundir import Claim, claim_run_dir, new_default_run_dir, point_latest
from .runlog import read_log
from .saving import restore_state, save_checkpoint
from .schedule import WarmupCosine
from .signals import install_stop_handlers, restore_handlers, sigterm_exits
from .trainer import Trainer
from .validation import record_eval, validation_loss

__all__ = ["INTERRUPTED", "Plan", "Trainer", "WarmupCosine", "add_parser", "plan_run", "run"]

INTERRUPTED = 130


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser(
        "train",
        help="train a byte-level language model (no arguments: the quick start)",
        description=(
            "Train a byte-level language model. Keys are set by --preset, then --config, then "
            "key=value arguments (training options and any model keyword, e.g. steps=500 "
            "dim=256 depth=4 ff_glu=true). --list-keys shows the training options."
        ),
        formatter_class=formatter,
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")
    p.add_argument("--config", metavar="FILE", help="a .toml or .yaml file of keys")
    p.add_argument("--preset", metavar="NAME", help="default, tiny or small (default: default)")
    p.add_argument("--data", metavar="PATH", help="text file, folder or .gz/.bz2 file")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<timestamp>)")
    p.add_argument("--resume", metavar="DIR", help="continue a run (folder or checkpoint)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar, evaluations or sample")
    p.add_argument("--list-keys", action="store_true", help="print the training keys and exit")


def _write_run_file(plan: Plan, trainer: Trainer, argv: list[str]) -> None:
    run = {
        "anyformer_version": __version__,
        "argv": argv,
        "train": dataclasses.asdict(plan.config),
        "model": plan.model,
        "model_config": net_of(trainer.lm).config_dict(),
        "parameters": trainer.num_params,
        "world": trainer.dist.world,
        "data": trainer.data.source,
    }
    atomic_write_text(trainer.run_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")


def _prepare_run_dir(plan: Plan, trainer: Trainer, argv: list[str], claim: Claim) -> None:
    """The run's files (ours: the folder is claimed), and ``latest`` where it is ours."""
    run_dir = trainer.run_dir
    claim.manifest.add_file(LOG_FILE)
    claim.manifest.add_file(RUN_FILE)
    if plan.restart:
        (run_dir / LOG_FILE).unlink(missing_ok=True)
    if plan.checkpoint is not None:
        source = run_dir_of(plan.checkpoint)
        if source is not None and source.resolve() != run_dir.resolve():
            kept = [r for r in read_log(source / LOG_FILE) if r["step"] <= trainer.step]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write_text(run_dir / LOG_FILE, text)
        trainer.log.truncate_after(trainer.step)
    if not (run_dir / RUN_FILE).exists() or plan.checkpoint is None:
        _write_run_file(plan, trainer, argv)
    point_latest(run_dir, claim.owns_parent)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """The ``train`` command; returns the exit status."""
    if args.list_keys:
        for key, doc in config_keys().items():
            print(f"{key:<17} {doc}")
        print("any other key is a model keyword (TransformerWrapper or Decoder), e.g. dim=256")
        return 0
    plan = plan_run(args)
    dist = setup_distributed(plan.config.device)
    ended = False
    try:
        with sigterm_exits():
            status = _train(plan, dist, args.quiet, argv)
        ended = True
        return status
    except OSError as e:  # a full disk, a folder gone, no permission: one line
        where = f"{e.filename}: " if e.filename else ""
        raise CLIError(f"{where}{e.strerror or e}", exit_code=1) from e
    finally:
        dist.shutdown(synchronize=ended)


def _claim(plan: Plan, dist: Dist) -> tuple[Path, Claim | None]:
    """Rank 0 checks and locks the run folder; every process learns the outcome."""
    claim, error = None, None
    if dist.is_main:
        try:
            run_dir = new_default_run_dir() if plan.run_dir is None else plan.run_dir
            claim = claim_run_dir(run_dir, plan.source_run, start_step(plan), plan.run_dir is None)
        except CLIError as e:
            error = (str(e), e.exit_code)
        except OSError as e:  # no permission, a read-only disk
            error = (f"cannot use run folder '{plan.run_dir}': {e.strerror or e}", 1)
    shared: Any = dist.all_gather_object((error, str(claim.run_dir) if claim else None))[0]
    error, folder = shared
    if error is not None:
        raise CLIError(*error)
    plan.run_dir = Path(folder)
    return plan.run_dir, claim


def _train(plan: Plan, dist: Dist, quiet: bool, argv: list[str]) -> int:
    """Build (nothing written yet), claim the run folder, train; the lock goes on every exit."""
    trainer = Trainer(plan, dist, quiet)
    state = trainer.setup(plan.checkpoint)
    if state is not None:  # optimizer, schedule, data position, random generators
        restore_state(trainer, state)
    check_steps_left(plan, trainer.step)
    run_dir, claim = _claim(plan, dist)
    try:
        trainer.attach(run_dir, claim)
        if claim is not None:
            _prepare_run_dir(plan, trainer, argv, claim)
        return _train_claimed(plan, trainer, claim)
    finally:
        if claim is not None:
            claim.release()


def _run_loop(trainer: Trainer) -> bool:
    """The first evaluation (a new run), then the loop; False when a signal stopped it."""
    old_handlers = install_stop_handlers(trainer)
    try:
        if trainer.step == 0:
            bpb = record_eval(trainer, validation_loss(trainer))
            say(trainer, f"step {0:>6}/{trainer.config.steps} | val bpb {bpb:.3f}")
        return TrainingLoop(trainer).run()
    except BaseException as e:
        if is_oom(e):
            raise oom_error(trainer) from e
        raise
    finally:
        restore_handlers(old_handlers)
        trainer.log.close()


def _train_claimed(plan: Plan, trainer: Trainer, claim: Claim | None) -> int:
    say(trainer, f"run folder: {trainer.run_dir}")
    say(trainer, describe(trainer))
    if plan.notice is not None:
        say(trainer, plan.notice)
    if plan.checkpoint is not None:
        say(trainer, f"resumed from {plan.checkpoint} at step {trainer.step}")
    try:
        finished = _run_loop(trainer)
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of this step
        if trainer.dist.is_main:
            print(f"anyformer: {stopped_at_once(trainer)}", file=sys.stderr, flush=True)
        return INTERRUPTED
    if claim is not None:
        plot(trainer, claim)
    if not finished:
        if trainer.saved_step != trainer.step:
            save_checkpoint(trainer)
        if trainer.dist.is_main:
            print(interrupted(trainer), file=sys.stderr, flush=True)
        return INTERRUPTED
    if trainer.dist.is_main:
        report(trainer)
    return 0
