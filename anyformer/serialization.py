"""A model is a folder: ``config.json`` (the resolved configuration) + ``model.safetensors``.

``save_pretrained(model, path)`` writes

- ``config.json``: ``{"format_version", "anyformer_version", "class", "config", "dtype",
  "tied_weights", ["wrapper"]}``, where ``config`` is ``model.config_dict()`` and ``class``
  names an entry of :data:`MODEL_CLASSES` (``wrapper`` holds the options of an
  ``AutoregressiveWrapper`` around the model, whose inner net is what is saved);
- ``model.safetensors``: the state dict with each shared tensor stored once (safetensors
  refuses shared storage); ``tied_weights`` maps every alias to the name that was stored.
  ``safe_serialization=False`` writes ``pytorch_model.bin`` instead (``torch.save`` of the
  same dict of tensors, loadable with ``torch.load(..., weights_only=True)``).

Every file is written to a temporary name and renamed into place; a folder that does not exist
yet is written as a temporary folder and renamed as a whole. ``load_pretrained(path)``
rebuilds the class with its ``from_config`` and loads the weights, re-tying shared tensors.
Problems raise ``ValueError`` naming the file (and the tensor).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MODEL_CLASSES",
    "TORCH_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "WRAPPER_CLASSES",
    "PretrainedMixin",
    "load_pretrained",
    "read_config",
    "register_model_class",
    "register_wrapper_class",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
FORMAT_VERSION = 1
"""Version of the folder layout; a folder with a larger number is refused."""

MODEL_CLASSES: dict[str, type[nn.Module]] = {}
"""Class name -> class for the models a folder can hold (each needs config_dict/from_config)."""

WRAPPER_CLASSES: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {}
"""Class name -> (class, option names) for wrappers saved around a model (their ``net``)."""


def register_model_class(cls: type[nn.Module], name: str | None = None) -> type[nn.Module]:
    """Make ``cls`` loadable from folders (it needs ``config_dict()`` and ``from_config``)."""
    for method in ("config_dict", "from_config"):
        if not callable(getattr(cls, method, None)):
            raise TypeError(f"register_model_class: {cls.__name__} has no {method}()")
    MODEL_CLASSES[name or cls.__name__] = cls
    return cls


def register_wrapper_class(
    cls: type[nn.Module], options: tuple[str, ...], name: str | None = None
) -> type[nn.Module]:
    """Make a wrapper around a model (held as ``.net``) savable: ``options`` are its init keywords."""
    WRAPPER_CLASSES[name or cls.__name__] = (cls, tuple(options))
    return cls


_WRAPPER_OPTIONS = ("ignore_index", "pad_value")


def _ensure_registered() -> None:
    """Register the built-in classes (imported lazily: the wrappers may import this module)."""
    if "TransformerWrapper" in MODEL_CLASSES:
        return
    from . import generation, wrappers

    for name in (
        "TransformerWrapper",
        "ContinuousTransformerWrapper",
        "ViTransformerWrapper",
        "XTransformer",
    ):
        if hasattr(wrappers, name):
            MODEL_CLASSES.setdefault(name, getattr(wrappers, name))
    for name in (
        "AutoregressiveWrapper",
        "ContinuousAutoregressiveWrapper",
        "XLAutoregressiveWrapper",
    ):
        if hasattr(generation, name):
            WRAPPER_CLASSES.setdefault(name, (getattr(generation, name), _WRAPPER_OPTIONS))


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new hidden folder in ``parent`` with the usual permissions (mkdtemp makes it 0700)."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=".tmp"))
    os.chmod(path, 0o777 & ~_umask())
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_path)`` on a temporary file beside ``path``, flush it, rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


# --------------------------------------------------------------------------- weights


def _storage_key(t: Tensor) -> tuple[Any, ...]:
    return (
        t.device,
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        tuple(t.shape),
        tuple(t.stride()),
        t.dtype,
    )


def unique_state_dict(module: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict with each shared tensor once, and ``{alias: stored name}`` for the rest.

    Tensors that share storage without being the same view are stored as separate copies.
    """
    tensors: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    first: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[Any, ...]] = set()
    for name, t in module.state_dict(keep_vars=True).items():
        t = t.detach()
        if t.numel() == 0:
            tensors[name] = t.contiguous()
            continue
        key = _storage_key(t)
        if key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        storage = (t.device, t.untyped_storage().data_ptr())
        shared = storage in storages
        storages.add(storage)
        if not t.is_contiguous():  # e.g. column-major linear weights: written row-major
            t = t.contiguous()
        elif shared:
            t = t.clone()
        tensors[name] = t
    return tensors, tied


def _write_weights(folder: Path, tensors: dict[str, Tensor], safe: bool, meta: dict[str, str]):
    cpu = {k: v.to("cpu") for k, v in tensors.items()}
    if safe:
        from safetensors.torch import save_file

        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(cpu, tmp, metadata=meta))
    else:
        atomic_write(folder / TORCH_WEIGHTS_NAME, lambda tmp: torch.save(cpu, tmp))


def _read_weights(folder: Path, device: str | torch.device) -> tuple[Path, dict[str, Tensor]]:
    safe, legacy = folder / WEIGHTS_NAME, folder / TORCH_WEIGHTS_NAME
    if safe.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return safe, load_file(safe, device=str(device))
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise ValueError(f"{safe}: corrupt or unreadable safetensors file ({e})") from e
    if legacy.is_file():
        try:
            data = torch.load(legacy, map_location=device, weights_only=True)
        except Exception as e:  # unpickling errors come in many types
            raise ValueError(f"{legacy}: corrupt or unreadable weights file ({e})") from e
        if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
            raise ValueError(f"{legacy}: expected a dict of tensors")
        return legacy, dict(data)
    raise ValueError(f"{folder}: no weights file ({WEIGHTS_NAME} or {TORCH_WEIGHTS_NAME})")


# --------------------------------------------------------------------------- config


def _split_wrapper(model: nn.Module) -> tuple[nn.Module, dict[str, Any] | None]:
    """-> (the model whose config is saved, the wrapper entry of config.json or None)."""
    _ensure_registered()
    name = type(model).__name__
    if name in WRAPPER_CLASSES and isinstance(model, WRAPPER_CLASSES[name][0]):
        _, options = WRAPPER_CLASSES[name]
        loss_fn = getattr(model, "loss_fn", None)
        if loss_fn is not None and not (
            isinstance(loss_fn, nn.MSELoss) and loss_fn.reduction == "none"
        ):
            raise TypeError(
                f"save_pretrained: {name} holds a custom loss_fn, which a folder cannot keep; "
                "save its .net and wrap the loaded model again"
            )
        return model.net, {"class": name, **{o: getattr(model, o) for o in options}}
    return model, None


def _model_class_name(model: nn.Module) -> str:
    for name, cls in MODEL_CLASSES.items():
        if type(model) is cls:
            return name
    known = ", ".join(sorted(MODEL_CLASSES))
    raise TypeError(
        f"save_pretrained: cannot save a {type(model).__name__}; known classes: {known} "
        "(register others with anyformer.serialization.register_model_class)"
    )


def _float_dtype(model: nn.Module) -> str | None:
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return str(t.dtype).removeprefix("torch.")
    return None


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``config.json`` of a model folder (no weights are read)."""
    from . import __version__

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a model folder (no such directory)")
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise ValueError(f"{file}: missing (a model folder holds {CONFIG_NAME} and weights)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: corrupt or unreadable JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError(f"{file}: not an anyformer model config (no 'config' object)")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{file}: 'format_version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{file}: written by anyformer {data.get('anyformer_version', '?')} in folder format "
            f"{version}; this anyformer ({__version__}) reads formats up to {FORMAT_VERSION}: "
            "upgrade anyformer"
        )
    return data


# --------------------------------------------------------------------------- public API


def save_pretrained(
    model: nn.Module, path: str | os.PathLike, *, safe_serialization: bool = True
) -> Path:
    """Write ``model`` to the folder ``path`` (created if needed); returns the folder path.

    A model wrapped in ``AutoregressiveWrapper`` is saved as its inner net plus the wrapper's
    options, and loads back wrapped.
    """
    from . import __version__

    inner, wrapper = _split_wrapper(model)
    name = _model_class_name(inner)
    tensors, tied = unique_state_dict(inner)
    config = {
        "format_version": FORMAT_VERSION,
        "anyformer_version": __version__,
        "class": name,
        "config": inner.config_dict(),
        "dtype": _float_dtype(inner),
        "tied_weights": tied,
    }
    if wrapper is not None:
        config["wrapper"] = wrapper
    text = json.dumps(config, indent=2, sort_keys=False) + "\n"
    meta = {"format": "pt", "anyformer_version": __version__, "class": name}

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save_pretrained: {folder} exists and is not a directory")
    if folder.is_dir():
        # weights first: a crash in between leaves the old config, whose shapes no longer
        # match, and load_pretrained says so
        _write_weights(folder, tensors, safe_serialization, meta)
        atomic_write_text(folder / CONFIG_NAME, text)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(folder.parent, f".{folder.name}.")
    try:
        _write_weights(tmp, tensors, safe_serialization, meta)
        atomic_write_text(tmp / CONFIG_NAME, text)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(folder.parent)
    return folder


def _check_weights(
    file: Path, model: nn.Module, loaded: dict[str, Tensor], tied: dict[str, str]
) -> None:
    expected = model.state_dict()
    for name, want in expected.items():
        if name in loaded:
            got = tuple(loaded[name].shape)
            if got != tuple(want.shape):
                raise ValueError(
                    f"{file}: tensor {name!r} has shape {got}, the model expects "
                    f"{tuple(want.shape)}"
                )
        elif name not in tied:
            raise ValueError(f"{file}: missing tensor {name!r} (shape {tuple(want.shape)})")
    for name in loaded:
        if name not in expected:
            raise ValueError(f"{file}: unexpected tensor {name!r}, which the model does not have")


def _retie(model: nn.Module, tied: dict[str, str]) -> None:
    """Make every alias the same tensor as its stored name (if the rebuilt model did not)."""
    for alias, target in tied.items():
        owner_name, _, attr = alias.rpartition(".")
        t_owner, _, t_attr = target.rpartition(".")
        owner = model.get_submodule(owner_name)
        source = getattr(model.get_submodule(t_owner), t_attr)
        if getattr(owner, attr) is not source:
            setattr(owner, attr, source)


def load_pretrained(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Rebuild the model saved in folder ``path`` and load its weights.

    ``dtype=None`` keeps the saved floating dtype; ``device=None`` loads on the CPU.
    """
    _ensure_registered()
    folder = Path(path)
    data = read_config(folder)
    file = folder / CONFIG_NAME
    name = data.get("class")
    if name not in MODEL_CLASSES:
        known = ", ".join(sorted(MODEL_CLASSES))
        raise ValueError(f"{file}: unknown model class {name!r} (known: {known})")
    tied = data.get("tied_weights") or {}
    if not isinstance(tied, dict):
        raise ValueError(f"{file}: 'tied_weights' must be an object, got {tied!r}")
    try:
        model = MODEL_CLASSES[name].from_config(data["config"])
    except (TypeError, ValueError, KeyError, NotImplementedError) as e:
        raise ValueError(
            f"{file}: cannot rebuild {name} (saved by anyformer "
            f"{data.get('anyformer_version', '?')}): {e}"
        ) from e
    if dtype is None and data.get("dtype"):
        dtype = getattr(torch, data["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{file}: unknown dtype {data['dtype']!r}")
    if dtype is not None:
        model = model.to(dtype)
    weights_file, loaded = _read_weights(folder, "cpu")
    _check_weights(weights_file, model, loaded, tied)
    with torch.no_grad():
        model.load_state_dict(loaded, strict=False)
    _retie(model, tied)
    if device is not None:
        model = model.to(device)
    model.eval()
    wrapper = data.get("wrapper")
    if wrapper is None:
        return model
    if not isinstance(wrapper, dict) or wrapper.get("class") not in WRAPPER_CLASSES:
        raise ValueError(f"{file}: unknown wrapper {wrapper!r}")
    cls, options = WRAPPER_CLASSES[wrapper["class"]]
    return cls(model, **{o: wrapper[o] for o in options if o in wrapper})


class PretrainedMixin:
    """Adds ``model.save_pretrained(path)`` and ``Class.from_pretrained(path)`` to a model class."""

    def save_pretrained(self, path: str | os.PathLike, *, safe_serialization: bool = True) -> Path:
        """Write this model to the folder ``path`` (see :func:`save_pretrained`)."""
        return save_pretrained(self, path, safe_serialization=safe_serialization)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        """Load a folder holding this class (a saved wrapper's inner net also qualifies)."""
        model = load_pretrained(path, device=device, dtype=dtype)
        if not isinstance(model, cls) and isinstance(getattr(model, "net", None), cls):
            model = model.net
        if not isinstance(model, cls):
            raise ValueError(
                f"{Path(path) / CONFIG_NAME}: holds a {type(model).__name__}, not a {cls.__name__}"
            )
        return model
