"""The training loop, as named steps: take a step, log it, show progress, evaluate when due,
save when due, stop when asked. The progress bar's final line is drawn once, when it closes."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from .data import LN2
from .errors import CLIError
from .report import format_time, say
from .saving import save_checkpoint
from .trainer import Trainer
from .validation import record_eval, validation_loss

__all__ = ["TrainingLoop"]


class TrainingLoop:
    """Runs a :class:`Trainer` to its ``steps``; :meth:`run` returns False when stopped by a signal."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.config = trainer.config
        self.tokens_per_step = self.config.batch_size * self.config.seq_len
        self.smooth: float | None = None  # the smoothed training loss
        self.bar: Any = None

    def run(self) -> bool:
        """Train to ``steps``; False when a signal stopped it (after a checkpoint where due)."""
        from tqdm.auto import tqdm

        t, c = self.trainer, self.config
        self.bar = tqdm(
            total=c.steps, initial=t.step, unit="step", disable=t.quiet,
            dynamic_ncols=True, mininterval=0.5, file=sys.stderr, smoothing=0.05,
        )  # fmt: skip
        try:
            while t.step < c.steps:
                loss, lr, elapsed = self.take_step()
                self.log_step(loss, lr)
                self.show_progress(elapsed)
                self.evaluate_if_due()
                self.save_if_due()
                if t.stop_agreed():
                    return False
        finally:
            self.bar.close()
        return True

    def take_step(self) -> tuple[float, float, float]:
        """One optimizer step: (loss, this step's learning rate, seconds)."""
        t = self.trainer
        start = time.perf_counter()
        lr = t.optimizer.param_groups[0]["lr"]  # this step's
        loss = t.train_step()
        t.step += 1
        t.tokens += self.tokens_per_step
        elapsed = time.perf_counter() - start
        t.train_seconds += elapsed
        if not math.isfinite(loss):
            raise CLIError(
                f"the loss became {loss} at step {t.step}: lower lr (now {self.config.lr}) "
                "or set grad_clip", exit_code=1,
            )  # fmt: skip
        return loss, lr, elapsed

    def log_step(self, loss: float, lr: float) -> None:
        """Append the step to ``log.jsonl`` and update the smoothed loss."""
        t = self.trainer
        t.log.write(
            {"event": "train", "step": t.step, "loss": loss, "bpb": loss / LN2,
             "lr": lr, "tokens": t.tokens, "time": round(t.train_seconds, 3)}
        )  # fmt: skip
        self.smooth = loss if self.smooth is None else 0.95 * self.smooth + 0.05 * loss

    def show_progress(self, elapsed: float) -> None:
        """Move the bar on; at the last step close it, so its final line is drawn once."""
        speed = self.tokens_per_step / max(elapsed, 1e-9)
        smooth = self.smooth if self.smooth is not None else float("nan")
        self.bar.set_postfix_str(f"train bpb {smooth / LN2:.3f}, {speed:,.0f} tok/s", refresh=False)
        if self.trainer.step < self.config.steps:
            self.bar.update(1)
        else:  # the bar's final state is drawn by close(), and only there
            self.bar.n = self.config.steps
            self.bar.close()

    def evaluate_if_due(self) -> None:
        """Evaluate every ``eval_every`` steps and at the end, printing a line."""
        t, c = self.trainer, self.config
        if t.step % c.eval_every and t.step != c.steps:
            return
        bpb = record_eval(t, validation_loss(t))
        smooth = self.smooth if self.smooth is not None else float("nan")
        line = (
            f"step {t.step:>6}/{c.steps} | val bpb {bpb:.3f} | train bpb {smooth / LN2:.3f} "
            f"| {format_time(t.train_seconds)}"
        )
        say(t, line, None if t.step == c.steps else self.bar)

    def save_if_due(self) -> None:
        """Write a checkpoint every ``save_every`` steps and at the end."""
        t, c = self.trainer, self.config
        if t.step % c.save_every == 0 or t.step == c.steps:
            save_checkpoint(t)
