"""One process's part of a training run: the model, its optimizer and schedule, and one step.

Evaluation (:mod:`.validation`), checkpoints (:mod:`.saving`), distribution
(:mod:`.parallel`) and the loop that calls them in turn (:mod:`.loop`) live in their own files.
"""

from __future__ import annotations

import random
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..serialization import read_config
from .checkpoint import LOG_FILE, load_state
from .data import BatchSampler, load_data
from .distributed import Dist
from .errors import CLIError
from .model import build_model, count_parameters, net_of
from .parallel import wrap_model
from .plan import Plan
from .rundir import Claim
from .runlog import RunLog
from .schedule import WarmupCosine

__all__ = ["Trainer", "first_difference"]


def first_difference(a: object, b: object, path: str = "") -> str | None:
    """The first key at which two nested configurations differ, as one line (None: equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} in the checkpoint, {b!r} here"


class Trainer:
    """One process's part of a run: model, optimizer, data, and one optimizer step."""

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
        self.run_dir = Path()
        self.log = RunLog(Path(LOG_FILE), enabled=False)  # until attach()

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
        """Mixed precision where the run asks for it, else nothing."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _load_weights(self, checkpoint: Path) -> None:
        from ..serialization import load_pretrained

        diff = first_difference(read_config(checkpoint)["config"], net_of(self.lm).config_dict())
        if diff is not None:
            raise CLIError(f"{checkpoint} holds another model ({diff})")
        loaded = load_pretrained(checkpoint, device=self.device, dtype=torch.float32)
        with torch.no_grad():
            self.lm.load_state_dict(loaded.state_dict())

    def setup(self, checkpoint: Path | None) -> dict[str, Any] | None:
        """Load the checkpoint's weights, wrap the model, build the optimizer; returns the
        checkpoint's trainer state, for :func:`.saving.restore_state` to load next."""
        c = self.config
        state = None
        if checkpoint is not None:
            self._load_weights(checkpoint)
            state = load_state(checkpoint)
        self.model = wrap_model(self.lm, self.dist, c)
        self.optimizer = self._optimizer()
        schedule = WarmupCosine(c.warmup_steps, c.steps, c.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        return state

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

    def stop_agreed(self) -> bool:
        """Whether any process was asked to stop (every process calls it after each step)."""
        if not self.dist.enabled:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        return bool(self.dist.all_reduce_sum(flag).item() > 0)
