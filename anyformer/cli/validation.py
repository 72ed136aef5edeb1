"""Evaluation during a training run: validation bits per byte on the run's fixed windows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .data import LN2, evaluate

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["record_eval", "validation_loss"]


def validation_loss(t: Trainer) -> float:
    """Mean validation loss in nats per byte (every process takes part)."""
    return evaluate(t.lm, t.data.val, t.config, t.dist, t.device, t.autocast)


def record_eval(t: Trainer, loss: float) -> float:
    """Log an evaluation at the current step; returns it in bits per byte."""
    bpb = loss / LN2
    t.log.write(
        {"event": "eval", "step": t.step, "val_loss": loss, "val_bpb": bpb,
         "time": round(t.train_seconds, 3)}
    )  # fmt: skip
    return bpb
