"""A model is a folder: ``config.json`` (the resolved configuration) + one weights file.

``save_pretrained(model, path)`` writes

- ``config.json``: ``{"format_version", "anyformer_version", "class", "config", "dtype",
  "tied_weights", ["wrapper"]}``, where ``config`` is ``model.config_dict()`` and ``class``
  names an entry of :data:`MODEL_CLASSES` (``wrapper`` holds the options of an
  ``AutoregressiveWrapper`` around the model, whose inner net is what is saved);
- ``model.safetensors``: the state dict with each shared parameter stored once (safetensors
  refuses shared storage); ``tied_weights`` maps every alias to the name that was stored.
  ``safe_serialization=False`` writes ``pytorch_model.bin`` instead (``torch.save`` of the
  same dict of tensors, loadable with ``torch.load(..., weights_only=True)``).

The folder is saved as a whole: written complete into a temporary sibling
(``.<name>.anyformer-save-<pid>-<random>.tmp``), flushed, and swapped in with one atomic
exchange (``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, undone by the next save if a
kill falls between them). A kill at any moment leaves the old or the new complete folder under
its name; the next save to that name removes the leftovers of dead processes. Files of an
existing folder that are not ours (anything but ``config.json`` and the weights files) are
carried into the new folder as hard links; a path that exists and is neither empty nor a model
folder is refused. An empty folder is written in place, config.json last (a kill leaves no
loadable half). Each save writes exactly one weights file.

``load_pretrained(path)`` first builds the saved class on the meta device under a size budget
derived from the weights file's header (so a config describing a far larger model fails in
moments, before anything is allocated), checks names, shapes, dtypes and ``tied_weights``
against that header, then builds the model, loads the weights and re-ties shared parameters.
Problems raise ``ValueError`` naming the file (and the tensor).
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._version import __version__
from .quantize.swap import quantize_entry, restore_quantized

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MODEL_CLASSES",
    "TORCH_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "WRAPPER_CLASSES",
    "ModelTooLarge",
    "PretrainedMixin",
    "SizeBudget",
    "build_on_meta",
    "clean_leftovers",
    "fsync_dir",
    "load_pretrained",
    "read_config",
    "read_header",
    "read_safetensors_header",
    "read_weights",
    "register_model_class",
    "register_wrapper_class",
    "save_pretrained",
    "size_budget",
    "too_large",
    "weights_file",
    "write_folder",
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


def _from_config(name: str, config: dict[str, Any]) -> nn.Module:
    """Build the registered model class ``name`` from its saved configuration."""
    built: nn.Module = cast(Any, MODEL_CLASSES[name]).from_config(config)
    return built


def register_wrapper_class(
    cls: type[nn.Module], options: tuple[str, ...], name: str | None = None
) -> type[nn.Module]:
    """Make a wrapper around a model (held as ``.net``) savable: ``options`` are its init keywords."""
    WRAPPER_CLASSES[name or cls.__name__] = (cls, tuple(options))
    return cls


# --------------------------------------------------------------------------- atomic files


def fsync_dir(path: Path) -> None:
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
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


# --------------------------------------------------------------------------- folder swap

_SAVE_MARK = ".anyformer-save-"
_ASIDE_MARK = ".anyformer-old-"
_OUR_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, TORCH_WEIGHTS_NAME})
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _renameat2() -> Callable[..., int] | None:
    """glibc's renameat2 (Linux), or None where the platform has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the platform cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # e.g. a file system without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(a))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _leftovers(folder: Path, mark: str) -> list[Path]:
    """Temporaries of saves to ``folder`` whose process is gone (killed mid-save)."""
    prefix = f".{folder.name}{mark}"
    found: list[Path] = []
    if not folder.parent.is_dir():
        return found
    for entry in folder.parent.iterdir():
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            found.append(entry)
    return found


def clean_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed saves to ``folder`` left beside it; returns the removed paths.

    Where a kill fell between the two renames of the fallback swap (platforms without an
    atomic exchange), the old save, set aside complete, is renamed back first.
    """
    folder = Path(folder)
    removed = []
    for aside in _leftovers(folder, _ASIDE_MARK):
        if not folder.exists() and not folder.is_symlink():
            os.rename(aside, folder)
            continue
        shutil.rmtree(aside, ignore_errors=True)
        removed.append(aside)
    for tmp in _leftovers(folder, _SAVE_MARK):
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _interrupted_swap(folder: Path) -> Path:
    """``folder``, or where it lacks because a save was killed between the two renames of the
    fallback swap, the complete old folder set aside beside it."""
    if folder.exists() or not folder.parent.is_dir():
        return folder
    prefix = f".{folder.name}{_ASIDE_MARK}"
    for entry in sorted(folder.parent.iterdir()):
        if entry.name.startswith(prefix) and (entry / CONFIG_NAME).is_file():
            return entry
    return folder


def _temp_sibling(folder: Path, mark: str) -> Path:
    """A new empty folder beside ``folder``, named ``.<name><mark><pid>-<random>.tmp``."""
    return make_temp_dir(folder.parent, f".{folder.name}{mark}{os.getpid()}-")


def _is_our_temp_file(name: str) -> bool:
    """A temporary of :func:`atomic_write` for one of our files (left by older versions)."""
    return name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in _OUR_FILES)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) every entry of ``old`` that is not ours into ``new``."""
    for entry in os.scandir(old):
        if entry.name in _OUR_FILES or _is_our_temp_file(entry.name):
            continue
        dst = new / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, str(dst))


def _swap_in(new: Path, folder: Path) -> None:
    """Put the complete folder ``new`` at ``folder``; the old one (if any) is removed."""
    if not folder.exists():
        os.rename(new, folder)
        fsync_dir(folder.parent)
        return
    if not _exchange(new, folder):
        aside = _temp_sibling(folder, _ASIDE_MARK)
        os.rename(folder, aside)  # replaces the empty placeholder
        try:
            os.rename(new, folder)
        except BaseException:
            os.rename(aside, folder)
            raise
        new = aside
    fsync_dir(folder.parent)
    shutil.rmtree(new, ignore_errors=True)  # now the old folder


def _is_our_config(file: Path) -> bool:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("format_version"), int)
        and isinstance(data.get("class"), str)
        and isinstance(data.get("config"), dict)
    )


def _only_ours(folder: Path) -> bool:
    """Empty, or holding nothing but our files (what a save killed in an empty folder leaves)."""
    return all(e.name in _OUR_FILES or _is_our_temp_file(e.name) for e in folder.iterdir())


def _target_folder(path: str | os.PathLike) -> Path:
    """The folder a save writes: refused when it exists and is not (empty or) a model folder."""
    folder = Path(path)
    if folder.is_symlink():
        folder = Path(os.path.realpath(folder))
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save_pretrained: {folder} exists and is not a directory")
    if folder.is_dir() and not (_is_our_config(folder / CONFIG_NAME) or _only_ours(folder)):
        raise ValueError(
            f"save_pretrained: {folder} exists and is not an anyformer model folder (no "
            f"anyformer {CONFIG_NAME}); refusing to replace it: save to a new or empty folder"
        )
    return folder


def _finish_file(path: Path) -> None:
    """The usual permissions (some writers make 0600 files), then flush to disk."""
    os.chmod(path, 0o666 & ~_umask())
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_folder(folder: Path, write: Callable[[Path], None]) -> Path:
    """Write a model folder as a whole; ``write(dir)`` writes (and flushes) our files into
    ``dir``, config.json last.

    An existing folder is replaced: ``write`` fills a temporary sibling, the entries of the
    folder that are not ours are carried over (hard links), and the result replaces the folder
    in one atomic exchange, so a kill at any moment leaves the old or the new folder complete
    under the name, at worst with a temporary beside it that the next save removes. An empty
    folder (such as a caller's own temporary) is written in place: config.json comes last, so
    a kill leaves no loadable half, and the next save replaces what it left.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(folder)
    if folder.is_dir() and not any(folder.iterdir()):
        return _write_in_place(folder, write)
    tmp = _temp_sibling(folder, _SAVE_MARK)
    try:
        write(tmp)
        if folder.is_dir():
            _carry_over(folder, tmp)
        fsync_dir(tmp)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_in_place(folder: Path, write: Callable[[Path], None]) -> Path:
    try:
        write(folder)
    except BaseException:
        for name in _OUR_FILES:
            (folder / name).unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return folder


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
    """The state dict with each shared parameter once, and ``{alias: stored name}`` for the rest.

    Only parameters are tied; buffers and tensors that share storage without being the same
    view are stored as separate copies.
    """
    tensors: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    first: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[Any, ...]] = set()
    for name, t in module.state_dict(keep_vars=True).items():
        is_param = isinstance(t, nn.Parameter)
        t = t.detach()
        if t.numel() == 0:
            tensors[name] = t.contiguous()
            continue
        key = _storage_key(t)
        if is_param and key in first:
            tied[name] = first[key]
            continue
        if is_param:
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


def _write_weights(
    folder: Path, tensors: dict[str, Tensor], safe: bool, meta: dict[str, str]
) -> Path:
    cpu = {k: v.to("cpu") for k, v in tensors.items()}
    if safe:
        import safetensors.torch

        safetensors.torch.save_file(cpu, str(folder / WEIGHTS_NAME), metadata=meta)
        return folder / WEIGHTS_NAME
    torch.save(cpu, folder / TORCH_WEIGHTS_NAME)
    return folder / TORCH_WEIGHTS_NAME


def weights_file(folder: Path) -> Path:
    """The one weights file of a model folder (a folder holding both is refused)."""
    safe, legacy = folder / WEIGHTS_NAME, folder / TORCH_WEIGHTS_NAME
    if safe.is_file() and legacy.is_file():
        raise ValueError(
            f"{folder}: holds both {WEIGHTS_NAME} and {TORCH_WEIGHTS_NAME}; a model folder holds "
            "one weights file: remove the stale one"
        )
    for file in (safe, legacy):
        if file.is_file():
            return file
    raise ValueError(f"{folder}: no weights file ({WEIGHTS_NAME} or {TORCH_WEIGHTS_NAME})")


Header = dict[str, tuple[tuple[int, ...], torch.dtype]]

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100_000_000  # safetensors' own limit


def _header_entry(file: Path, name: str, info: Any, data_size: int) -> tuple[tuple[int, ...], Any]:
    def bad(why: str) -> ValueError:
        return ValueError(f"{file}: corrupt or unreadable safetensors file (tensor {name!r} {why})")

    if not isinstance(info, dict):
        raise bad(f"has entry {info!r}")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _SAFETENSORS_DTYPES:
        raise bad(f"has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise bad(f"has shape {shape!r}")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
    ):
        raise bad(f"has data_offsets {offsets!r}")
    dt = _SAFETENSORS_DTYPES[dtype]
    nbytes = math.prod(shape) * dt.itemsize
    begin, end = offsets
    if not 0 <= begin <= end <= data_size or end - begin != nbytes:
        raise bad(
            f"({dtype}, shape {tuple(shape)}: {nbytes} bytes) has data_offsets {offsets} "
            f"outside the {data_size} bytes of data (a truncated file?)"
        )
    return tuple(shape), dt


def read_safetensors_header(file: str | os.PathLike) -> Header:
    """``{name: (shape, dtype)}`` from a safetensors file's header, checked against the file's
    size, without reading any tensor data."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > min(size - 8, _MAX_HEADER):
                raise ValueError(f"header length {length} exceeds the file's {size} bytes")
            meta = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{file}: corrupt or unreadable safetensors file ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(
            f"{file}: corrupt or unreadable safetensors file (header not a JSON object)"
        )
    data_size = size - 8 - length
    return {
        name: _header_entry(file, name, info, data_size)
        for name, info in meta.items()
        if name != "__metadata__"
    }


def _load_torch_file(file: Path, mmap: bool) -> dict[str, Tensor]:
    try:
        data = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # unpickling errors come in many types
        if mmap:  # files in torch's legacy (non-zip) format cannot be memory-mapped
            return _load_torch_file(file, mmap=False)
        raise ValueError(f"{file}: corrupt or unreadable weights file ({e})") from e
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()
    ):
        raise ValueError(f"{file}: expected a dict of tensors")
    return dict(data)


def read_header(file: str | os.PathLike) -> Header:
    """``{name: (shape, dtype)}`` of a weights file (safetensors: from its header alone;
    torch files: memory-mapped, so tensor data is not read)."""
    file = Path(file)
    if file.name.endswith(".safetensors"):
        return read_safetensors_header(file)
    return {k: (tuple(v.shape), v.dtype) for k, v in _load_torch_file(file, mmap=True).items()}


def read_weights(file: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of a safetensors or torch (``weights_only``) weights file."""
    file = Path(file)
    if file.name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(file, device=str(device))
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise ValueError(f"{file}: corrupt or unreadable safetensors file ({e})") from e
    return {k: v.to(device) for k, v in _load_torch_file(file, mmap=False).items()}


# --------------------------------------------------------------------------- building


class ModelTooLarge(BaseException):
    """Raised inside a model's construction when it passes its budget (a BaseException, so
    that no ``except Exception`` in a constructor swallows it)."""

    def __init__(self, elements: int, tensors: int) -> None:
        super().__init__(elements, tensors)
        self.elements = elements
        self.tensors = tensors


_FACTORIES = frozenset(
    {
        torch.empty,
        torch.empty_strided,
        torch.zeros,
        torch.ones,
        torch.full,
        torch.rand,
        torch.randn,
        torch.randint,
        torch.arange,
        torch.linspace,
        torch.logspace,
        torch.eye,
        torch.tensor,
        torch.zeros_like,
        torch.ones_like,
        torch.empty_like,
        torch.full_like,
        torch.rand_like,
        torch.randn_like,
    }
)


class SizeBudget(TorchFunctionMode):
    """Counts the tensors that factory functions create, and their elements, and raises
    :class:`ModelTooLarge` past either limit: a model built under it stops early when its
    configuration describes more than its weights file holds. With ``probe``, each factory
    call is sized on the meta device first, so nothing over the limit is ever allocated."""

    def __init__(self, max_elements: int, max_tensors: int, probe: bool = False) -> None:
        super().__init__()
        self.max_elements = max_elements
        self.max_tensors = max_tensors
        self.probe = probe
        self.elements = 0
        self.tensors = 0

    def _count(self, t: Tensor) -> None:
        self.elements += t.numel()
        self.tensors += 1
        if self.elements > self.max_elements or self.tensors > self.max_tensors:
            raise ModelTooLarge(self.elements, self.tensors)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func not in _FACTORIES:
            return func(*args, **kwargs)
        if self.probe:
            self._count(func(*args, **{**kwargs, "device": "meta"}))
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if isinstance(out, Tensor):
            self._count(out)
        return out


def build_on_meta(build: Callable[[], nn.Module], shapes: Collection[tuple[int, ...]]) -> nn.Module:
    """``build()`` on the meta device (no memory), for a checkpoint holding tensors of
    ``shapes``: it may create twice their elements plus 1M (computed tables such as rotary
    ones) and twice their number plus 64, else :class:`ModelTooLarge` stops it early."""
    with torch.device("meta"), SizeBudget(*size_budget(shapes)):
        return build()


def size_budget(shapes: Collection[tuple[int, ...]]) -> tuple[int, int]:
    """(elements, tensors) a model may create for a checkpoint of tensors of ``shapes``."""
    return 2 * sum(math.prod(s) for s in shapes) + (1 << 20), 2 * len(shapes) + 64


def too_large(
    source: str, shapes: Collection[tuple[int, ...]], e: ModelTooLarge, config: Any
) -> str:
    """The message for a configuration that describes more than the checkpoint holds."""
    stored = sum(math.prod(s) for s in shapes)
    return (
        f"{source}: describes a model larger than its weights, which hold {len(shapes)} tensors "
        f"of {stored} elements: construction stopped after {e.tensors} tensors of {e.elements} "
        f"elements (largest settings: {large_settings(config)})"
    )


def large_settings(config: Any, prefix: str = "", top: int = 3) -> str:
    """The largest integer settings of a nested config, as ``key=value`` text."""
    found: list[tuple[int, str]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, int) and not isinstance(value, bool):
            found.append((value, key))

    walk(config, prefix)
    return ", ".join(f"{k}={v}" for v, k in sorted(found, reverse=True)[:top])


# --------------------------------------------------------------------------- config


def _split_wrapper(model: nn.Module) -> tuple[nn.Module, dict[str, Any] | None]:
    """-> (the model whose config is saved, the wrapper entry of config.json or None)."""
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
        net = model.get_submodule("net")
        return net, {"class": name, **{o: getattr(model, o) for o in options}}
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
    """The dtype of the model's floating parameters (which a folder stores as one dtype)."""
    dtypes: dict[torch.dtype, str] = {}
    for name, p in model.named_parameters():
        if p.is_floating_point():
            dtypes.setdefault(p.dtype, name)
    if len(dtypes) > 1:
        mixed = ", ".join(f"{n!r} is {str(d).removeprefix('torch.')}" for d, n in dtypes.items())
        raise ValueError(
            f"save_pretrained: the model's parameters mix floating dtypes ({mixed}); a model "
            "folder stores one: cast the model with model.to(dtype) first"
        )
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return str(t.dtype).removeprefix("torch.")
    return None


def _check_fields(file: Path, data: Any) -> None:
    """The types of config.json's top-level entries."""
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError(f"{file}: not an anyformer model config (no 'config' object)")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{file}: 'format_version' must be an integer, got {version!r}")
    expected: dict[str, tuple[type | tuple[type, ...], str]] = {
        "class": (str, "a class name"),
        "dtype": ((str, type(None)), "a dtype name or null"),
        "tied_weights": ((dict, type(None)), "an object {alias: stored name}"),
        "wrapper": ((dict, type(None)), "an object or null"),
    }
    for key, (types, what) in expected.items():
        if not isinstance(data.get(key), types):
            raise ValueError(f"{file}: {key!r} must be {what}, got {data.get(key)!r}")
    for alias, target in (data.get("tied_weights") or {}).items():
        if not isinstance(target, str):
            raise ValueError(
                f"{file}: tied_weights entry {alias!r} must name a stored tensor, got {target!r}"
            )


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``config.json`` of a model folder (no weights are read)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a model folder (no such directory)")
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise ValueError(f"{file}: missing (a model folder holds {CONFIG_NAME} and weights)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{file}: corrupt or unreadable JSON ({e})") from e
    _check_fields(file, data)
    if data["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{file}: written by anyformer {data.get('anyformer_version', '?')} in folder format "
            f"{data['format_version']}; this anyformer ({__version__}) reads formats up to "
            f"{FORMAT_VERSION}: upgrade anyformer"
        )
    return data


# --------------------------------------------------------------------------- public API


def save_pretrained(
    model: nn.Module, path: str | os.PathLike, *, safe_serialization: bool = True
) -> Path:
    """Write ``model`` to the folder ``path`` (created if needed); returns the folder path.

    The folder is written as a whole beside ``path`` and swapped in atomically (see
    :func:`write_folder`): files of an existing folder that are not ours are kept; a ``path``
    that exists and is neither empty nor a model folder is refused. A model wrapped in
    ``AutoregressiveWrapper`` is saved as its inner net plus the wrapper's options, and loads
    back wrapped.
    """
    inner, wrapper = _split_wrapper(model)
    name = _model_class_name(inner)
    tensors, tied = unique_state_dict(inner)
    config = {
        "format_version": FORMAT_VERSION,
        "anyformer_version": __version__,
        "class": name,
        "config": cast(Any, inner).config_dict(),  # registered classes have it
        "dtype": _float_dtype(inner),
        "tied_weights": tied,
    }
    if (quantized := quantize_entry(inner)) is not None:  # which maps are int8/int4
        config["quantize"] = quantized
    if wrapper is not None:
        config["wrapper"] = wrapper
    text = json.dumps(config, indent=2, sort_keys=False) + "\n"
    meta = {"format": "pt", "anyformer_version": __version__, "class": name}

    def write(tmp: Path) -> None:
        weights = _write_weights(tmp, tensors, safe_serialization, meta)
        _finish_file(weights)  # on disk before the config that makes the folder loadable
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
        _finish_file(tmp / CONFIG_NAME)

    return write_folder(_target_folder(path), write)


def _saved_dtype(file: Path, data: dict[str, Any]) -> torch.dtype | None:
    name = data.get("dtype")
    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{file}: 'dtype' must name a floating torch dtype, got {name!r}")
    return dtype


def _rebuild(file: Path, data: dict[str, Any], header: Header) -> tuple[nn.Module, bool]:
    """-> (the saved class built from its config, whether on the meta device), checked for
    size on the way: on the meta device, or where the class cannot be built there, on the CPU
    under the same budget."""
    name = data["class"]
    if name not in MODEL_CLASSES:
        known = ", ".join(sorted(MODEL_CLASSES))
        raise ValueError(f"{file}: unknown model class {name!r} (known: {known})")
    shapes = [shape for shape, _ in header.values()]

    def build() -> nn.Module:
        return _from_config(name, data["config"])

    try:
        try:
            return build_on_meta(build, shapes), True
        except Exception:  # e.g. a constructor reading tensor values: try on the CPU
            with SizeBudget(*size_budget(shapes), probe=True):
                return build(), False
    except ModelTooLarge as e:
        raise ValueError(too_large(str(file), shapes, e, data["config"])) from None
    except Exception as e:  # a constructor can raise anything on a config it does not accept
        raise ValueError(
            f"{file}: cannot rebuild {name} (saved by anyformer "
            f"{data.get('anyformer_version', '?')}): {type(e).__name__}: {e}"
        ) from e


def _check_tied(file: Path, model: nn.Module, header: Header, tied: dict[str, str]) -> None:
    """Every tie joins two distinct parameters of equal shape, the target stored in the file."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for alias, target in tied.items():
        where = f"{file}: tied_weights entry {alias!r}: {target!r}"
        for name in (alias, target):
            if name not in params:
                raise ValueError(f"{where}: {name!r} is not a parameter of the model")
        if alias == target:
            raise ValueError(f"{where}: ties a parameter to itself (it would stay unset)")
        if target not in header:
            raise ValueError(f"{where}: the weights file does not hold {target!r}")
        if alias in header:
            raise ValueError(f"{where}: the weights file holds {alias!r} as well")
        if params[alias].shape != params[target].shape:
            raise ValueError(
                f"{where}: shapes differ ({tuple(params[alias].shape)} vs "
                f"{tuple(params[target].shape)})"
            )


def _check_header(file: Path, model: nn.Module, header: Header, tied: dict[str, str]) -> None:
    """Names, shapes and dtypes of the weights file against the model (built on meta)."""
    expected = model.state_dict()
    for name, want in expected.items():
        if name not in header:
            if name not in tied:
                raise ValueError(f"{file}: missing tensor {name!r} (shape {tuple(want.shape)})")
            continue
        shape, dtype = header[name]
        if shape != tuple(want.shape):
            raise ValueError(
                f"{file}: tensor {name!r} has shape {shape}, the model expects {tuple(want.shape)}"
            )
        if dtype != want.dtype:
            raise ValueError(
                f"{file}: tensor {name!r} is stored as {dtype}, the model expects "
                f"{want.dtype} (refusing to cast it)"
            )
    for name in header:
        if name not in expected:
            raise ValueError(f"{file}: unexpected tensor {name!r}, which the model does not have")


def _retie(model: nn.Module, tied: dict[str, str]) -> None:
    """Make every alias the same parameter as its stored name (if the rebuilt model did not)."""
    for alias, target in tied.items():
        owner_name, _, attr = alias.rpartition(".")
        owner = model.get_submodule(owner_name)
        source = model.get_parameter(target)
        if owner._parameters[attr] is not source:
            owner.register_parameter(attr, source)


def _wrap(file: Path, model: nn.Module, wrapper: dict[str, Any] | None) -> nn.Module:
    if wrapper is None:
        return model
    if wrapper.get("class") not in WRAPPER_CLASSES:
        raise ValueError(f"{file}: unknown wrapper {wrapper!r}")
    cls, options = WRAPPER_CLASSES[wrapper["class"]]
    try:
        return cls(model, **{o: wrapper[o] for o in options if o in wrapper})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: cannot rebuild the wrapper {wrapper!r}: {e}") from e


def load_pretrained(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Rebuild the model saved in folder ``path`` and load its weights.

    ``dtype=None`` keeps the saved floating dtype; ``device=None`` loads on the CPU. Before
    anything is allocated, the model is built on the meta device and compared with the
    weights file's header (names, shapes, dtypes, ``tied_weights``); a mismatch raises
    ``ValueError`` naming the tensor. A run folder of ``anyformer train`` loads its newest
    checkpoint.
    """
    from .cli.layout import newest_checkpoint  # a run folder: its newest checkpoint

    folder = _interrupted_swap(newest_checkpoint(path))
    data = read_config(folder)
    file = folder / CONFIG_NAME
    tied = data.get("tied_weights") or {}
    saved_dtype = _saved_dtype(file, data)
    weights = weights_file(folder)
    header = read_header(weights)
    model, on_meta = _rebuild(file, data, header)
    restore_quantized(model, data.get("quantize"), str(file))
    if saved_dtype is not None:
        model = model.to(saved_dtype)
    _check_tied(file, model, header, tied)
    _check_header(weights, model, header, tied)
    if on_meta:  # the sizes agree: build it for real
        model = _from_config(data["class"], data["config"])
        restore_quantized(model, data.get("quantize"), str(file))
        if saved_dtype is not None:
            model = model.to(saved_dtype)
    loaded = read_weights(weights)
    _check_header(weights, model, {k: (tuple(v.shape), v.dtype) for k, v in loaded.items()}, tied)
    with torch.no_grad():
        model.load_state_dict(loaded, strict=False)
    _retie(model, tied)
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    return _wrap(file, model, data.get("wrapper"))


class PretrainedMixin:
    """Adds ``model.save_pretrained(path)`` and ``Class.from_pretrained(path)`` to a model class.

    A subclass fills the folder registry where it is defined: ``class M(PretrainedMixin,
    nn.Module, folder_model=True)`` makes ``M`` a model class of :data:`MODEL_CLASSES`;
    ``folder_wrapper=("ignore_index", ...)`` makes it a wrapper of :data:`WRAPPER_CLASSES` with
    those init keywords (the format itself names no class).
    """

    def __init_subclass__(
        cls,
        *,
        folder_model: bool = False,
        folder_wrapper: tuple[str, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if folder_model:
            register_model_class(cls)  # type: ignore[arg-type]
        if folder_wrapper is not None:
            register_wrapper_class(cls, folder_wrapper)  # type: ignore[arg-type]

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
            model = model.get_submodule("net")
        if not isinstance(model, cls):
            raise ValueError(
                f"{Path(path) / CONFIG_NAME}: holds a {type(model).__name__}, not a {cls.__name__}"
            )
        return model
