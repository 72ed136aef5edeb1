"""What ``anyformer train`` will do, decided before any work: the configuration, the run folder,
and (with ``--resume``) the checkpoint to continue from."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .checkpoint import (
    RUN_FILE,
    TRAIN_CONFIG_NAME,
    list_checkpoints,
    resume_checkpoint,
    run_dir_of,
)
from .config import TrainConfig
from .errors import CLIError
from .overrides import (
    build_train_config,
    kept_preset_keys,
    load_config_file,
    merge_layers,
    parse_overrides,
    resolve_layers,
)
from .rundir import check_target

__all__ = ["Plan", "check_steps_left", "plan_run", "start_step"]


@dataclasses.dataclass
class Plan:
    """What to run: the configuration, where to write, and the checkpoint to resume from."""

    config: TrainConfig
    model: dict[str, Any]
    run_dir: Path | None  # None: a new runs/<timestamp>
    checkpoint: Path | None = None
    restart: bool = False  # a run stopped before its first checkpoint starts again
    source_run: Path | None = None  # the run folder resumed (it may be written into)
    notice: str | None = None  # said before training: preset model keywords a file kept


def _kept_notice(args: argparse.Namespace) -> str | None:
    """The preset's model keywords a config file with model keywords keeps, as one line."""
    kept = kept_preset_keys(args.preset, args.config, args.overrides)
    if not kept:
        return None
    keys = ", ".join(f"{k}={json.dumps(v)}" for k, v in kept.items())
    return (
        f"model: {keys} from the preset '{args.preset or 'default'}' ({args.config} does not "
        "set them; set one to none for the library's default)"
    )


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        return {**data["train"], "model": data["model"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CLIError(f"{file}: unreadable run configuration ({e})", exit_code=1) from e


def _resume_layers(args: argparse.Namespace, saved: dict[str, Any]) -> dict[str, Any]:
    """The saved configuration, then --config, key=value and flags on top."""
    if args.preset:
        raise CLIError("--preset cannot be combined with --resume (the run has its configuration)")
    layers = [saved]
    if args.config:
        layers.append(load_config_file(args.config))
    layers.append(parse_overrides(args.overrides))
    layers.append({k: v for k, v in (("data", args.data), ("device", args.device)) if v})
    return merge_layers(*layers)


def _restart_plan(args: argparse.Namespace) -> Plan | None:
    """A run folder without a complete checkpoint: start it again from its run.json."""
    run_dir = Path(args.resume)
    if not (run_dir / RUN_FILE).is_file() or list_checkpoints(run_dir):
        return None
    layer = _resume_layers(args, _read_json(run_dir / RUN_FILE))
    config = build_train_config(layer)
    out = Path(args.out) if args.out else run_dir
    return Plan(config, layer["model"], out, restart=True, source_run=run_dir)


def _follow_link(path: Path) -> Path:
    """A run named through a symlink (``runs/latest``) as the folder the link points at."""
    for _ in range(40):  # a cycle (a link left pointing at itself) is left for the checks to name
        if not path.is_symlink():
            break
        target = Path(os.readlink(path))
        path = target if target.is_absolute() else path.parent / target
    return path


def start_step(plan: Plan) -> int:
    """The step the run starts from: its checkpoint's, else 0."""
    if plan.checkpoint is None:
        return 0
    name = plan.checkpoint.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else 0


def check_steps_left(plan: Plan, done: int) -> None:
    """Resuming a run already ``done`` steps into its ``steps`` would do nothing: refuse, saying
    how to go on (checked once the checkpoint has loaded, before anything is written; a run
    folder that would be refused anyway is named first)."""
    if plan.checkpoint is not None and done >= plan.config.steps:
        if plan.run_dir is not None:
            check_target(plan.run_dir, plan.source_run)
        raise CLIError(
            f"nothing to do: the checkpoint '{plan.checkpoint}' is at step {done} and steps is "
            f"{plan.config.steps}; give steps=N with N > {done} to train further"
        )


def plan_run(args: argparse.Namespace) -> Plan:
    """Resolve the configuration (and, with --resume, the checkpoint); errors raise CLIError."""
    if args.resume is None:
        layer = resolve_layers(
            args.preset, args.config, args.overrides, {"data": args.data, "device": args.device}
        )
        config = build_train_config(layer)
        out = Path(args.out) if args.out else None
        return Plan(config, layer["model"], out, notice=_kept_notice(args))
    # the run itself, not a link to it: `--resume runs/latest` must not repoint `latest` at itself
    args = argparse.Namespace(**{**vars(args), "resume": str(_follow_link(Path(args.resume)))})
    restart = _restart_plan(args)
    if restart is not None:
        return restart
    checkpoint = resume_checkpoint(args.resume)
    if not (checkpoint / TRAIN_CONFIG_NAME).is_file():
        raise CLIError(f"{checkpoint} is not a training checkpoint (no {TRAIN_CONFIG_NAME})")
    layer = _resume_layers(args, _read_json(checkpoint / TRAIN_CONFIG_NAME))
    config = build_train_config(layer)
    source = run_dir_of(checkpoint)
    run_dir = Path(args.out) if args.out else source
    if run_dir is None:
        raise CLIError(f"{checkpoint} is not inside a run folder: give --out DIR for the new run")
    return Plan(config, layer["model"], run_dir, checkpoint, source_run=source)
