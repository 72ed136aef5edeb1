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
from .model import net_of

BYTE_VOCAB = 256

__all__ = ["load_model", "model_max_len", "require_bytes", "saved_train_config"]


def load_model(path: str, device: str = "auto") -> tuple[Path, nn.Module]:
    """(model folder, AutoregressiveWrapper) for a run, checkpoint or model folder."""
    from .. import AutoregressiveWrapper

    folder = resolve_model_dir(path)
    try:
        model = load_pretrained(folder, device=resolve_device(device))
    except CLIError:
        raise
    except ValueError as e:  # the library names the file and the problem
        raise CLIError(" ".join(str(e).split()), exit_code=1) from e
    except Exception as e:  # a corrupt folder fails in many ways (safetensors, json, torch)
        raise CLIError(f"cannot load '{folder}': {' '.join(str(e).split())}", exit_code=1) from e
    if not isinstance(model, AutoregressiveWrapper):
        if not hasattr(model, "num_tokens"):
            raise CLIError(f"{folder} holds a {type(model).__name__}, not a language model")
        model = AutoregressiveWrapper(model)
    return folder, model


def require_bytes(folder: Path, lm: nn.Module, command: str) -> None:
    """The byte commands need a model with a token per byte in and out, and no extra inputs."""
    config = net_of(lm).config_dict()
    num_tokens = config.get("num_tokens")
    logits: Any = config.get("logits_dim") or num_tokens
    if not isinstance(num_tokens, int) or num_tokens < BYTE_VOCAB or logits < BYTE_VOCAB:
        raise CLIError(
            f"anyformer {command} reads and writes bytes, so it needs a model of at least "
            f"{BYTE_VOCAB} tokens in and out; '{folder}' has num_tokens={num_tokens}, "
            f"logits_dim={logits}"
        )
    if config.get("embed_num_tokens"):
        raise CLIError(
            f"anyformer {command} cannot run '{folder}': its embed_num_tokens "
            f"{config['embed_num_tokens']!r} need embed_ids, which byte text has none of"
        )


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


def model_max_len(model: nn.Module) -> int:
    """The longest context the model was trained on (its max_seq_len, else 256)."""
    return int(getattr(model.net, "max_seq_len", 0) or 256)
