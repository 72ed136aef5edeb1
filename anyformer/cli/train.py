"""``anyformer train``: train a byte-level language model, with checkpoints, logs and resume.

With no arguments it trains the ``default`` preset on the built-in corpus into
``runs/<timestamp>`` (``runs/latest`` points at it). Under ``torchrun`` every process trains
its shard of each global batch (DistributedDataParallel, or FSDP2 with ``fsdp=true``); only
rank 0 prints, logs and writes checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..serialization import read_config
from .checkpoint import (
    LOG_FILE,
    PLOT_FILE,
    RUN_FILE,
    TRAIN_CONFIG_NAME,
    list_checkpoints,
    load_state,
    resume_checkpoint,
    run_dir_of,
    write_checkpoint,
)
from .config import TrainConfig, config_keys
from .data import LN2, BatchSampler, evaluate, load_data
from .distributed import Dist, setup_distributed
from .errors import CLIError
from .manifest import atomic_write_text
from .model import build_model, count_parameters
from .overrides import (
    build_train_config,
    load_config_file,
    merge_layers,
    parse_overrides,
    resolve_layers,
)
from .rundir import Claim, claim_run_dir, new_default_run_dir, point_latest
from .runlog import RunLog, plot_losses, read_log
from .sampling import SamplingOptions, stream_bytes

__all__ = ["WarmupCosine", "add_parser", "run"]

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


class WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup = warmup
        self.total = total
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _format_time(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} in the checkpoint, {b!r} here"


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


@dataclasses.dataclass
class Plan:
    """What to run: the configuration, where to write, and the checkpoint to resume from."""

    config: TrainConfig
    model: dict[str, Any]
    run_dir: Path | None  # None: a new runs/<timestamp>
    checkpoint: Path | None = None
    restart: bool = False  # a run stopped before its first checkpoint starts again
    source_run: Path | None = None  # the run folder resumed (it may be written into)


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


def plan_run(args: argparse.Namespace) -> Plan:
    """Resolve the configuration (and, with --resume, the checkpoint); errors raise CLIError."""
    if args.resume is None:
        layer = resolve_layers(
            args.preset, args.config, args.overrides, {"data": args.data, "device": args.device}
        )
        config = build_train_config(layer)
        return Plan(config, layer["model"], Path(args.out) if args.out else None)
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


class Trainer:
    """One process's part of a run: model, optimizer, data, and the loop."""

    def __init__(self, plan: Plan, dist: Dist, quiet: bool) -> None:
        self.plan = plan
        self.claim: Claim | None = None  # rank 0: the locked run folder and its manifest
        self.config = config = plan.config
        self.dist = dist
        self.device = dist.device
        self.quiet = quiet or not dist.is_main
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.data = load_data(config)
        self.lm = build_model(config, plan.model).to(self.device)
        if dist.enabled:  # different dropout draws on each process
            torch.manual_seed(config.seed + 7919 * (dist.rank + 1))
        self.sampler = BatchSampler(self.data.train, config, dist)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.step = 0
        self.tokens = 0
        self.train_seconds = 0.0
        self.stop_requested = False
        self.saved_step = -1
        self.model: nn.Module = self.lm
        self.num_params = count_parameters(self.lm)

    # ------------------------------------------------------------------ setup
    def attach(self, run_dir: Path, claim: Claim | None) -> None:
        """Write into ``run_dir`` from now on (rank 0 holds its ``claim``)."""
        self.run_dir = run_dir
        self.claim = claim
        self.log = RunLog(run_dir / LOG_FILE, enabled=self.dist.is_main)

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.lm.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": c.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2))

    def _amp_dtype(self) -> torch.dtype | None:
        p = self.config.precision
        if p == "auto":
            cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            return torch.bfloat16 if cuda_bf16 else None
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]

    def autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def setup(self, checkpoint: Path | None) -> None:
        """Load the checkpoint's weights, wrap the model, build the optimizer, load its state."""
        c = self.config
        state = None
        if checkpoint is not None:
            from ..serialization import load_pretrained

            diff = _first_difference(read_config(checkpoint)["config"], self.lm.net.config_dict())
            if diff is not None:
                raise CLIError(f"{checkpoint} holds another model ({diff})")
            loaded = load_pretrained(checkpoint, device=self.device, dtype=torch.float32)
            with torch.no_grad():
                self.lm.load_state_dict(loaded.state_dict())
            state = load_state(checkpoint)
        self._wrap()
        self.optimizer = self._optimizer()
        schedule = WarmupCosine(c.warmup_steps, c.steps, c.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        if state is not None:
            self._restore(state)

    def _wrap(self) -> None:
        """DDP or FSDP2 under torchrun, then torch.compile if asked."""
        if self.dist.enabled and self.config.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in self.lm.net.attn_layers.layers:
                fully_shard(block)
            fully_shard(self.lm)
            self.model = self.lm
        elif self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.lm, device_ids=ids)
        if self.config.compile:
            self.model = torch.compile(self.model)

    # ------------------------------------------------------------------ state
    def _full_model_state(self) -> dict[str, torch.Tensor] | None:
        if not (self.dist.enabled and self.config.fsdp):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.lm, options=options)

    def _optimizer_state(self) -> dict[str, Any]:
        if self.dist.enabled and self.config.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self.lm, self.optimizer, options=options)
        return self.optimizer.state_dict()

    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def trainer_state(self) -> dict[str, Any]:
        """Everything but the weights (collective under FSDP: every process calls it)."""
        return {
            "step": self.step,
            "tokens": self.tokens,
            "train_seconds": self.train_seconds,
            "optimizer": self._optimizer_state(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": self.dist.all_gather_object(self._rng_state()),
            "world": self.dist.world,
            "anyformer_version": __version__,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        """Optimizer, scheduler, data position and RNG state of a checkpoint."""
        if self.dist.enabled and self.config.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True)
            set_optimizer_state_dict(self.lm, self.optimizer, state["optimizer"], options=options)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.train_seconds = float(state["train_seconds"])
        rngs = state["rng"]
        if len(rngs) == self.dist.world:
            rng = rngs[self.dist.rank]
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        else:  # another number of processes: fresh draws for dropout
            torch.manual_seed(self.config.seed + 104729 * self.step + self.dist.rank)

    def save(self) -> Path | None:
        """Write the checkpoint of the current step (rank 0 writes; all take part)."""
        full = self._full_model_state()
        state = self.trainer_state()
        path = None
        if self.dist.is_main:
            lm = self.lm
            if full is not None:
                lm = build_model(self.config, self.plan.model)
                lm.load_state_dict(full)
            train_config = {"train": dataclasses.asdict(self.config), "model": self.plan.model}
            manifest = self.claim.manifest if self.claim is not None else None
            if manifest is None:  # pragma: no cover - rank 0 always holds the claim
                raise RuntimeError("the run folder is not claimed")
            try:
                path = write_checkpoint(
                    self.run_dir, self.step, lm, state, train_config,
                    self.config.keep_checkpoints, manifest,
                )  # fmt: skip
            except OSError as e:
                raise CLIError(
                    f"cannot write the checkpoint of step {self.step} in '{self.run_dir}': "
                    f"{e.strerror or e}; the earlier checkpoints are intact",
                    exit_code=1,
                ) from e
        self.dist.barrier()
        self.saved_step = self.step
        return path

    # ------------------------------------------------------------------ loop
    def train_step(self) -> float:
        """One optimizer step over this process's shard; returns the global mean loss."""
        micro_batches = self.sampler.next_micro_batches()
        total = torch.zeros((), device=self.device)
        ddp_sync = getattr(self.model, "no_sync", None)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            context = ddp_sync() if (ddp_sync is not None and not last) else nullcontext()
            with context:
                with self.autocast():
                    loss = self.model(batch.to(self.device, non_blocking=True))
                loss = loss / len(micro_batches)
                self.scaler.scale(loss).backward()
            total += loss.detach()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.lm.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.dist.all_reduce_sum(total)
        return float(total) / self.dist.world

    def evaluate(self) -> float:
        return evaluate(self.lm, self.data.val, self.config, self.dist, self.device, self.autocast)

    def _stop_agreed(self) -> bool:
        if not self.dist.enabled:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        return bool(self.dist.all_reduce_sum(flag).item() > 0)

    def _record_eval(self, loss: float) -> float:
        bpb = loss / LN2
        self.log.write(
            {"event": "eval", "step": self.step, "val_loss": loss, "val_bpb": bpb,
             "time": round(self.train_seconds, 3)}
        )  # fmt: skip
        return bpb


def _say(trainer: Trainer, message: str, bar: Any = None) -> None:
    if trainer.quiet:
        return
    if bar is not None:
        bar.write(message)
    else:
        print(message, flush=True)


def _install_stop_handlers(trainer: Trainer) -> dict[int, Any]:
    """Ctrl-C (and SIGTERM) ask the loop to save and stop; a second Ctrl-C stops at once."""

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            old[sig] = signal.signal(sig, handler)
    return old


def _write_run_file(plan: Plan, trainer: Trainer, argv: list[str]) -> None:
    run = {
        "anyformer_version": __version__,
        "argv": argv,
        "train": dataclasses.asdict(plan.config),
        "model": plan.model,
        "model_config": trainer.lm.net.config_dict(),
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


def _loop(trainer: Trainer) -> bool:
    """Train to ``steps``; returns False when stopped by a signal."""
    c = trainer.config
    from tqdm.auto import tqdm

    bar = tqdm(
        total=c.steps, initial=trainer.step, unit="step", disable=trainer.quiet,
        dynamic_ncols=True, mininterval=0.5, file=sys.stderr, smoothing=0.05,
    )  # fmt: skip
    tokens_per_step = c.batch_size * c.seq_len
    smooth = None
    try:
        while trainer.step < c.steps:
            start = time.perf_counter()
            lr = trainer.optimizer.param_groups[0]["lr"]  # this step's
            loss = trainer.train_step()
            trainer.step += 1
            trainer.tokens += tokens_per_step
            elapsed = time.perf_counter() - start
            trainer.train_seconds += elapsed
            if not math.isfinite(loss):
                raise CLIError(
                    f"the loss became {loss} at step {trainer.step}: lower lr (now {c.lr}) "
                    "or set grad_clip", exit_code=1,
                )  # fmt: skip
            trainer.log.write(
                {"event": "train", "step": trainer.step, "loss": loss, "bpb": loss / LN2,
                 "lr": lr, "tokens": trainer.tokens, "time": round(trainer.train_seconds, 3)}
            )  # fmt: skip
            smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
            bar.set_postfix_str(
                f"train bpb {smooth / LN2:.3f}, {tokens_per_step / max(elapsed, 1e-9):,.0f} tok/s",
                refresh=False,
            )
            bar.update(1)
            if trainer.step % c.eval_every == 0 or trainer.step == c.steps:
                bpb = trainer._record_eval(trainer.evaluate())
                _say(
                    trainer,
                    f"step {trainer.step:>6}/{c.steps} | val bpb {bpb:.3f} | train bpb "
                    f"{smooth / LN2:.3f} | {_format_time(trainer.train_seconds)}",
                    bar,
                )
            if trainer.step % c.save_every == 0 or trainer.step == c.steps:
                trainer.save()
            if trainer._stop_agreed():
                return False
    finally:
        bar.close()
    return True


def _oom_error(trainer: Trainer, error: BaseException) -> CLIError:
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


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):  # torch.OutOfMemoryError is the same class
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
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


def _describe(trainer: Trainer) -> str:
    c = trainer.config
    m = trainer.lm.net.config_dict()["attn_layers"]
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
        with _sigterm_exits():
            status = _train(plan, dist, args.quiet, argv)
        ended = True
        return status
    except OSError as e:  # a full disk, a folder gone, no permission: one line
        where = f"{e.filename}: " if e.filename else ""
        raise CLIError(f"{where}{e.strerror or e}", exit_code=1) from e
    finally:
        dist.shutdown(synchronize=ended)


@contextlib.contextmanager
def _sigterm_exits() -> Any:
    """SIGTERM outside the training loop (whose handler saves first) exits through ``finally``."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _start_step(plan: Plan) -> int:
    if plan.checkpoint is None:
        return 0
    name = plan.checkpoint.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else 0


def _claim(plan: Plan, dist: Dist) -> Claim | None:
    """Rank 0 checks and locks the run folder; every process learns the outcome."""
    claim, error = None, None
    if dist.is_main:
        try:
            default = plan.run_dir is None
            run_dir = new_default_run_dir() if default else plan.run_dir
            claim = claim_run_dir(run_dir, plan.source_run, _start_step(plan), default)
        except CLIError as e:
            error = (str(e), e.exit_code)
        except OSError as e:  # no permission, a read-only disk
            error = (f"cannot use run folder '{plan.run_dir}': {e.strerror or e}", 1)
    shared = dist.all_gather_object((error, str(claim.run_dir) if claim else None))[0]
    error, run_dir = shared  # type: ignore[misc]
    if error is not None:
        raise CLIError(*error)
    plan.run_dir = Path(run_dir)
    return claim


def _train(plan: Plan, dist: Dist, quiet: bool, argv: list[str]) -> int:
    """Build (nothing written yet), claim the run folder, train; the lock goes on every exit."""
    trainer = Trainer(plan, dist, quiet)
    trainer.setup(plan.checkpoint)
    claim = _claim(plan, dist)
    try:
        trainer.attach(plan.run_dir, claim)  # type: ignore[arg-type]  # set by _claim
        return _train_claimed(plan, dist, argv, trainer, claim)
    finally:
        if claim is not None:
            claim.release()


def _train_claimed(
    plan: Plan, dist: Dist, argv: list[str], trainer: Trainer, claim: Claim | None
) -> int:
    if claim is not None:
        _prepare_run_dir(plan, trainer, argv, claim)
    _say(trainer, f"run folder: {plan.run_dir}")
    _say(trainer, _describe(trainer))
    if plan.checkpoint is not None:
        _say(trainer, f"resumed from {plan.checkpoint} at step {trainer.step}")
    old_handlers = _install_stop_handlers(trainer)
    try:
        if trainer.step == 0:
            bpb = trainer._record_eval(trainer.evaluate())
            _say(trainer, f"step {0:>6}/{plan.config.steps} | val bpb {bpb:.3f}")
        finished = _loop(trainer)
    except BaseException as e:
        if _is_oom(e):
            raise _oom_error(trainer, e) from e
        raise
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        trainer.log.close()
    if claim is not None:
        _plot(trainer, claim)
    if not finished:
        if trainer.saved_step != trainer.step:
            trainer.save()
        if dist.is_main:
            path = list_checkpoints(plan.run_dir)[-1][1]
            print(
                f"interrupted at step {trainer.step}: checkpoint {path}; continue with "
                f"anyformer train --resume {plan.run_dir}",
                file=sys.stderr,
                flush=True,
            )
        return INTERRUPTED
    if dist.is_main:
        _report(trainer)
    return 0


def _plot(trainer: Trainer, claim: Claim) -> None:
    """``loss.png``, unless a file of that name is there that the run did not write."""
    if not claim.manifest.owns_file(PLOT_FILE):
        _say(trainer, f"not writing {PLOT_FILE}: a file of that name, not ours, is there")
        return
    claim.manifest.add_file(PLOT_FILE)
    title = f"{trainer.num_params:,} parameters, {trainer.step} steps"
    plot_losses(trainer.run_dir / LOG_FILE, trainer.run_dir / PLOT_FILE, title)


def _report(trainer: Trainer) -> None:
    records = read_log(trainer.run_dir / LOG_FILE)
    evals = [r for r in records if r.get("event") == "eval" and "val_bpb" in r]
    final = evals[-1]["val_bpb"] if evals else float("nan")
    print(
        f"final validation bits per byte: {final:.3f} after {trainer.step} steps "
        f"({_format_time(trainer.train_seconds)} of training)",
        flush=True,
    )
    _final_sample(trainer)
    print(f"run folder: {trainer.run_dir}", flush=True)
    if not trainer.quiet:
        print(
            f"sample again: anyformer generate {trainer.run_dir} --prompt {trainer.config.prompt!r}",
            flush=True,
        )
