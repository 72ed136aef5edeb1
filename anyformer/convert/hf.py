"""Hugging Face models -> anyformer models with the same weights and the same outputs.

``from_hf(hf_model)`` takes a ``transformers`` model object; ``from_hf_dir(path)`` reads a local
folder in Hugging Face layout (``config.json`` plus ``model.safetensors``, ``pytorch_model.bin``
or a sharded checkpoint with its ``*.index.json``) without importing ``transformers``. Both return
an ordinary anyformer model (built from public keywords, so ``save_pretrained``,
``config_dict`` and generation work on it) in eval mode.

Supported: see :func:`supported_architectures` (GPT-2, Llama incl. 3.x, Qwen2, Qwen3, Phi-3,
Mistral, Gemma 2, Gemma 3 text, BERT, ...; one module per family, ``hf_<family>.py``).
Rotary settings of the Llama-style families (``hf_rope.py``): rope types default, linear,
llama3, yarn, dynamic and longrope, and Phi-3's ``partial_rotary_factor``.
An architecture or option the converter cannot reproduce exactly raises
:class:`UnsupportedHFModel` (a ``ValueError``) naming it; a checkpoint tensor the converter does
not know, or an anyformer parameter left without a tensor, raises too, so nothing is dropped or
left random silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

import torch
from torch import Tensor, nn

from ..serialization import ModelTooLarge, build_on_meta, too_large
from .hf_base import HFConfig, HFFamily, UnsupportedHFModel, WeightLoader

__all__ = [
    "UnsupportedHFModel",
    "from_hf",
    "from_hf_dir",
    "read_hf_checkpoint",
    "supported_architectures",
]

CONFIG_NAME = "config.json"
SAFE_NAME = "model.safetensors"
TORCH_NAME = "pytorch_model.bin"


def _families() -> tuple[HFFamily, ...]:
    from . import (
        hf_bert,
        hf_gemma,
        hf_gpt2,
        hf_llama,
        hf_mistral,
        hf_mixtral,
        hf_phi3,
        hf_qwen2,
        hf_qwen3,
        hf_qwen3_moe,
        hf_t5,
        hf_vit,
    )

    return (
        hf_gpt2.FAMILY,
        hf_llama.FAMILY,
        hf_bert.FAMILY,
        hf_qwen2.FAMILY,
        hf_t5.FAMILY,
        hf_t5.MT5_FAMILY,
        hf_vit.FAMILY,
        hf_qwen3.FAMILY,
        hf_phi3.FAMILY,
        hf_mistral.FAMILY,
        hf_mixtral.FAMILY,
        hf_qwen3_moe.FAMILY,
        hf_gemma.GEMMA2,
        hf_gemma.GEMMA3,
    )


def supported_architectures() -> dict[str, str]:
    """Hugging Face class name -> what the converted model returns ('lm': logits, 'hidden':
    the last hidden state, 'classes': image class logits)."""
    return {arch: head for f in _families() for arch, head in f.architectures.items()}


def _family(model_type: Any) -> HFFamily:
    for family in _families():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in _families() for t in f.model_types)
    raise UnsupportedHFModel(
        f"Hugging Face model_type {model_type!r} is not supported by the anyformer converter "
        f"(supported: {', '.join(known)})"
    )


def _head(family: HFFamily, architecture: str | None) -> str:
    if architecture is None:  # a config.json without "architectures": the first listed class
        return next(iter(family.architectures.values()))
    head = family.architectures.get(architecture)
    if head is None:
        known = ", ".join(family.architectures)
        raise UnsupportedHFModel(
            f"Hugging Face architecture {architecture!r} is not supported by the anyformer "
            f"converter (supported for {family.name}: {known})"
        )
    return head


def _prefix(family: HFFamily, tensors: Mapping[str, Tensor], source: str) -> str:
    for prefix in family.prefixes:
        if prefix + family.probe in tensors:
            return prefix
    raise UnsupportedHFModel(
        f"{source}: not a {family.name} checkpoint (no tensor {family.probe!r} under any of the "
        f"prefixes {list(family.prefixes)})"
    )


def _materialise(model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """Meta-device model -> real, uninitialised tensors of ``dtype`` on ``device``; computed
    buffers (rotary frequencies, ...) are recomputed, tied weights re-tied."""
    model = model.to(dtype=dtype).to_empty(device=device)
    tie_weights = getattr(model, "tie_weights", None)
    if callable(tie_weights):
        tie_weights()
    for module in model.modules():
        if not any(b is not None for b in module._buffers.values()):
            continue
        reset = getattr(module, "reset_parameters", None)
        if reset is None:
            raise UnsupportedHFModel(
                f"internal: {type(module).__name__} holds buffers but cannot recompute them"
            )
        reset()
    return model


def _convert(
    config: Mapping[str, Any],
    architecture: str | None,
    tensors: Mapping[str, Tensor],
    source: str,
    dtype: torch.dtype,
    device: torch.device | str,
) -> nn.Module:
    family = _family(config.get("model_type"))
    head = _head(family, architecture)
    if family.prepare is not None:
        config = family.prepare(dict(config), tensors)
    hf_config = HFConfig(config, family.name)
    shapes = [tuple(t.shape) for t in tensors.values()]
    try:
        model = build_on_meta(lambda: family.build(hf_config, head), shapes)
    except ModelTooLarge as e:
        raise UnsupportedHFModel(too_large(source, shapes, e, dict(config))) from None
    except UnsupportedHFModel:
        raise
    except Exception as e:  # a value of the wrong type or range in config.json
        raise UnsupportedHFModel(
            f"{source}: cannot build the {family.name} model from its config "
            f"({type(e).__name__}: {e})"
        ) from e
    model = _materialise(model, device, dtype)
    prefix = _prefix(family, tensors, source)
    loader = WeightLoader(tensors, model, source, prefix=prefix, ignore=family.ignore)
    family.load(loader, hf_config, model, head)
    loader.finish()
    return model.eval()


def _float_dtype(tensors: Any) -> torch.dtype:
    for t in tensors:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def from_hf(hf_model: nn.Module, *, dtype: torch.dtype | None = None) -> nn.Module:
    """The anyformer model equivalent to a Hugging Face ``transformers`` model object.

    The result lives on ``hf_model``'s device, in ``dtype`` (default: ``hf_model``'s).
    """
    config = getattr(hf_model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(
            f"from_hf: expected a Hugging Face transformers model (with a .config), got "
            f"{type(hf_model).__name__}"
        )
    params = list(hf_model.parameters())
    device = params[0].device if params else torch.device("cpu")
    dtype = dtype or _float_dtype(params)
    architecture = type(hf_model).__name__
    return _convert(
        config.to_dict(), architecture, hf_model.state_dict(), architecture, dtype, device
    )


# --------------------------------------------------------------------------- folders


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a Hugging Face model folder."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise ValueError(f"{file}: missing (a Hugging Face model folder holds {CONFIG_NAME})")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: corrupt or unreadable JSON ({e})") from e
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValueError(f"{file}: not a Hugging Face model config (no 'model_type')")
    return data


def _load_file(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise ValueError(f"{file}: missing (named by the checkpoint index)")
    if file.name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(file, device="cpu")
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise ValueError(f"{file}: corrupt or unreadable safetensors file ({e})") from e
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{file}: corrupt or unreadable weights file ({e})") from e
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{file}: expected a dict of tensors")
    return dict(data)


def _allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where a shard may resolve to: the folder, and for a Hugging Face hub cache snapshot
    (``.../snapshots/<revision>``, whose files are links into the repository's ``blobs``)
    that ``blobs`` folder."""
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":
        roots.append((folder.parent.parent / "blobs").resolve())
    return tuple(roots)


def shard_path(index: Path, shard: Any) -> Path:
    """The file a checkpoint index names, confined to the index's folder: no absolute paths,
    no ``..``, no symbolic link leading outside (ValueError otherwise)."""
    if not isinstance(shard, str) or not shard:
        raise ValueError(f"{index}: a shard must be a file name, got {shard!r}")
    relative = PurePath(shard)
    if relative.is_absolute() or PureWindowsPath(shard).is_absolute() or ".." in relative.parts:
        raise ValueError(
            f"{index}: shard {shard!r} is outside the model folder (absolute paths and '..' "
            "are refused)"
        )
    path = index.parent / relative
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in _allowed_roots(index.parent)):
        raise ValueError(f"{index}: shard {shard!r} leads outside the model folder (to {resolved})")
    return path


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: corrupt checkpoint index (needs a 'weight_map'): {e}") from e
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
        raise ValueError(f"{index}: 'weight_map' must map tensor names to shard files")
    for shard in weight_map.values():
        shard_path(index, shard)
    return weight_map


def _load_sharded(index: Path) -> dict[str, Tensor]:
    weight_map = _weight_map(index)
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        loaded = _load_file(shard_path(index, shard))
        for name, file in weight_map.items():
            if file != shard:
                continue
            if name not in loaded:
                raise ValueError(
                    f"{index.parent / shard}: missing tensor {name!r} (per {index.name})"
                )
            tensors[name] = loaded[name]
    return tensors


def read_hf_checkpoint(path: str | os.PathLike) -> tuple[Path, dict[str, Tensor]]:
    """(file read, tensors) of a Hugging Face model folder: safetensors first, then
    ``pytorch_model.bin``; sharded checkpoints through their ``*.index.json``."""
    folder = Path(path)
    for name in (SAFE_NAME, f"{SAFE_NAME}.index.json", TORCH_NAME, f"{TORCH_NAME}.index.json"):
        file = folder / name
        if file.is_file():
            return file, _load_sharded(file) if name.endswith(".json") else _load_file(file)
    raise ValueError(
        f"{folder}: no weights ({SAFE_NAME}, {TORCH_NAME} or a sharded checkpoint's index)"
    )


def from_hf_dir(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The anyformer model saved in a local Hugging Face folder (``transformers`` not needed).

    The class comes from ``config.json``'s ``architectures`` (the family's first class when
    absent); ``dtype`` defaults to the stored weights' dtype.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a Hugging Face model folder (no such directory)")
    config = read_hf_config(folder)
    architectures = config.get("architectures") or [None]
    if len(architectures) != 1:
        raise UnsupportedHFModel(
            f"{folder / CONFIG_NAME}: expected one class in 'architectures', got {architectures}"
        )
    file, tensors = read_hf_checkpoint(folder)
    _check_declared_dtype(folder / CONFIG_NAME, config, tensors, str(file))
    dtype = dtype or _float_dtype(tensors.values())
    return _convert(config, architectures[0], tensors, str(file), dtype, device)


def _check_declared_dtype(
    config_file: Path, config: Mapping[str, Any], tensors: Mapping[str, Tensor], source: str
) -> None:
    """Floating tensors must be stored in the dtype config.json declares (``torch_dtype``, or
    ``dtype`` in transformers 5), when it declares one."""
    declared = config.get("torch_dtype", config.get("dtype"))
    want = getattr(torch, declared, None) if isinstance(declared, str) else None
    if not isinstance(want, torch.dtype) or not want.is_floating_point:
        return
    for name, t in tensors.items():
        if t.is_floating_point() and t.dtype != want:
            raise ValueError(
                f"{source}: tensor {name!r} is stored as {t.dtype}, but {config_file} declares "
                f"torch_dtype {declared!r} (refusing to cast silently)"
            )
