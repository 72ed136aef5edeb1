"""Helpers the model-reading commands share: load a folder, read the run's configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..serialization import load_pretrained
from .checkpoint import TRAIN_CONFIG_NAME, resolve_model_dir
from .config import TrainConfig
from .distributed import resolve_device
from .errors import CLIError

__all__ = ["load_model", "none_or", "saved_train_config"]


def load_model(path: str, device: str = "auto") -> tuple[Path, nn.Module]:
    """(model folder, AutoregressiveWrapper) for a run, checkpoint or model folder."""
    from .. import AutoregressiveWrapper

    folder = resolve_model_dir(path)
    try:
        model = load_pretrained(folder, device=resolve_device(device))
    except ValueError as e:
        raise CLIError(str(e), exit_code=1) from e
    if not isinstance(model, AutoregressiveWrapper):
        if not hasattr(model, "num_tokens"):
            raise CLIError(f"{folder} holds a {type(model).__name__}, not a language model")
        model = AutoregressiveWrapper(model)
    return folder, model


def saved_train_config(folder: Path) -> TrainConfig | None:
    """The training configuration stored beside a checkpoint (None for a bare model folder)."""
    file = folder / TRAIN_CONFIG_NAME
    if not file.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))["train"]
        return TrainConfig(**data)
    except (KeyError, TypeError, ValueError, CLIError) as e:
        raise CLIError(f"{file}: unreadable training configuration ({e})", exit_code=1) from e


def none_or(kind: type) -> Any:
    """argparse type: ``none`` -> None, else ``kind(text)``."""

    def convert(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null", "off") else kind(text)

    convert.__name__ = kind.__name__
    return convert


def model_max_len(model: nn.Module) -> int:
    """The longest context the model was trained on (its max_seq_len, else 256)."""
    return int(getattr(model.net, "max_seq_len", 0) or 256)
