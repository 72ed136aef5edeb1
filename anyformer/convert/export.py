"""anyformer models -> Hugging Face ``transformers`` folders with the same outputs.

``to_hf(model)`` returns ``(config, state_dict)`` in a Hugging Face family's layout;
``to_hf_dir(model, folder)`` writes them as ``config.json`` + ``model.safetensors`` (or shards
``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json`` past
``max_shard_size``), which ``AutoModelForCausalLM.from_pretrained(folder)`` (``AutoModel``
for models returning hidden states) loads without anyformer. An ``XTransformer`` is written as
``T5ForConditionalGeneration`` (``AutoModelForSeq2SeqLM``), a ``ViTransformerWrapper`` as
``ViTForImageClassification`` / ``ViTModel``.

The family is found from the model's options: each family's writer produces a
``config.json``, the import side (:func:`anyformer.convert.from_hf_dir`) rebuilds the anyformer
model it describes, and the export goes ahead only when that model has the same options as
the one exported (up to options that do not change an eval-mode forward: dropouts, kernels,
initialisation). Otherwise ``ValueError`` names every option that differs from the closest
family. Nothing is approximated.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..serialization import _SAVE_MARK, _temp_sibling, clean_leftovers, fsync_dir
from .hf_base import HFConfig
from .hf_export_base import HFExporter, canonical_options

__all__ = ["export_families", "to_hf", "to_hf_dir"]

SAFE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
_MISSING = "<unset>"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def export_families() -> tuple[HFExporter, ...]:
    """The Hugging Face families a model can be written as, in the order they are tried."""
    from . import (
        hf_export_bert,
        hf_export_gemma,
        hf_export_gpt2,
        hf_export_llama,
        hf_export_t5,
        hf_export_vit,
    )

    llama = hf_export_llama
    gpt2, bert, t5 = hf_export_gpt2.GPT2, hf_export_bert.BERT, hf_export_t5.T5_ENCODER
    lm_families = (llama.LLAMA, llama.MISTRAL, llama.QWEN2, llama.QWEN3, llama.PHI3)
    gemma = (hf_export_gemma.GEMMA2, hf_export_gemma.GEMMA3)
    return (*lm_families, *gemma, gpt2, bert, t5, hf_export_t5.T5_SEQ2SEQ, hf_export_vit.VIT)


def _net(model: nn.Module) -> nn.Module:
    """The TransformerWrapper (an AutoregressiveWrapper's ``.net``)."""
    net = getattr(model, "net", model)
    if not callable(getattr(net, "config_dict", None)):
        raise TypeError(
            f"to_hf: expected an anyformer TransformerWrapper (or AutoregressiveWrapper), got "
            f"{type(model).__name__}"
        )
    if type(net).__name__ not in ("TransformerWrapper", "XTransformer", "ViTransformerWrapper"):
        raise ValueError(
            f"to_hf: a {type(net).__name__} has no Hugging Face export (TransformerWrapper, "
            "XTransformer and ViTransformerWrapper models export)"
        )
    return net


def _head(net: nn.Module) -> str:
    if type(net).__name__ == "XTransformer":
        return "lm"
    if type(net).__name__ == "ViTransformerWrapper":
        return "hidden" if net.config.num_classes is None else "classes"  # type: ignore[union-attr]
    return "hidden" if net.config.return_only_embed else "lm"  # type: ignore[union-attr]


def _show(value: Any) -> str:
    return value if value == _MISSING else repr(value)


def _mismatches(
    exporter: HFExporter, net: nn.Module, head: str
) -> tuple[dict | None, list[str], bool]:
    """(the Hugging Face config, [], True) when ``net`` maps exactly onto ``exporter``'s
    family, else (None, the options that differ, each as 'keyword=value (Family needs value)',
    True), or (None, [why], False) when the family cannot apply at all."""
    name = exporter.name
    if head not in exporter.architectures:
        return None, [f"return_only_embed={head == 'hidden'} ({name} has no such head)"], False
    try:
        config = exporter.config(net, head)
        with torch.device("meta"):
            rebuilt = exporter.family.build(HFConfig(config, name), head)
    except (ValueError, TypeError) as e:
        return None, [str(e)], False
    want, got = canonical_options(net), canonical_options(rebuilt)
    problems = [
        f"{key}={_show(want.get(key, _MISSING))} ({name} needs {_show(got.get(key, _MISSING))})"
        for key in sorted(set(want) | set(got))
        if want.get(key, _MISSING) != got.get(key, _MISSING)
    ]
    return (None if problems else config), problems, True


def _choose(net: nn.Module, family: str | None) -> tuple[HFExporter, dict[str, Any]]:
    head = _head(net)
    exporters = tuple(e for e in export_families() if e.model_class == type(net).__name__)
    if family is not None:
        names = {e.name.lower(): e for e in exporters}
        names.update({t: e for e in exporters for t in e.family.model_types})
        if family.lower() not in names:
            raise ValueError(f"to_hf: unknown family {family!r} (known: {', '.join(names)})")
        exporters = (names[family.lower()],)
    found: list[tuple[int, str, list[str]]] = []
    for exporter in exporters:
        config, problems, compared = _mismatches(exporter, net, head)
        if config is not None:
            return exporter, config
        # a family without the head, or whose config cannot be written, is the farthest
        distance = len(problems) if compared else 10**6
        found.append((distance, exporter.name, problems))
    _, name, problems = min(found, key=lambda f: f[0])
    raise ValueError(
        f"to_hf: the model does not map exactly onto a Hugging Face family; the closest, {name}, "
        f"differs in: {'; '.join(problems)}"
        + ("" if family else f" (families tried: {', '.join(e.name for e in exporters)})")
    )


def _check_plain(net: nn.Module) -> None:
    """Quantized or packed linear maps have no Hugging Face counterpart."""
    from ..quantize.swap import OWN_KERNEL_TYPES

    for name, module in net.named_modules():
        if isinstance(module, OWN_KERNEL_TYPES):
            raise ValueError(
                f"to_hf: {name} is a {type(module).__name__} (packed for decoding); export the "
                "model before quantizing or packing it (Hugging Face stores plain weights)"
            )


def _dtype(net: nn.Module) -> torch.dtype:
    dtypes = {p.dtype for p in net.parameters() if p.is_floating_point()}
    if len(dtypes) != 1:
        raise ValueError(
            f"to_hf: the model's parameters mix floating dtypes {sorted(map(str, dtypes))}; "
            "cast it with model.to(dtype) first"
        )
    return dtypes.pop()


def to_hf(
    model: nn.Module, *, family: str | None = None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config.json dict, state dict)`` of ``model`` in a Hugging Face family's layout.

    ``family`` ('Llama', 'qwen2', 'GPT-2', 'bert', ...) forces one; by default the first
    family the model maps onto exactly is used. A model that maps onto none raises
    ``ValueError`` naming the options that differ from the closest family.
    """
    net = _net(model)
    _check_plain(net)
    exporter, config = _choose(net, family)
    dtype = _dtype(net)
    config["dtype"] = str(dtype).removeprefix("torch.")
    tensors = exporter.weights(net, _head(net))
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    return config, state


# --------------------------------------------------------------------------- folders


def _shard_bytes(max_shard_size: int | str) -> int:
    if isinstance(max_shard_size, int) and not isinstance(max_shard_size, bool):
        size = max_shard_size
    elif isinstance(max_shard_size, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", max_shard_size.upper())
        if match is None:
            raise ValueError(
                f"to_hf_dir: max_shard_size must be a byte count or a size such as '5GB' or "
                f"'500MiB', got {max_shard_size!r}"
            )
        size = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    else:
        raise TypeError(f"to_hf_dir: max_shard_size must be an int or str, got {max_shard_size!r}")
    if size < 1:
        raise ValueError(f"to_hf_dir: max_shard_size must be >= 1 byte, got {max_shard_size!r}")
    return size


def _shards(state: Mapping[str, Tensor], limit: int) -> list[dict[str, Tensor]]:
    """Tensors in order, cut into groups of at most ``limit`` bytes (a larger tensor alone)."""
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def _write(folder: Path, config: dict[str, Any], state: dict[str, Tensor], limit: int) -> None:
    from safetensors.torch import save_file

    shards = _shards(state, limit)
    written = []
    if len(shards) == 1:
        save_file(shards[0], str(folder / SAFE_NAME), metadata={"format": "pt"})
        written.append(folder / SAFE_NAME)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            written.append(folder / name)
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        written.append(folder / INDEX_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for file in [*written, folder / CONFIG_NAME]:
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _check_target(folder: Path) -> None:
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise FileExistsError(
            f"to_hf_dir: {folder} exists and is not a folder; refusing to replace it"
        )
    if folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(
            f"to_hf_dir: {folder} exists and is not empty; refusing to overwrite it: write to a "
            "new or empty folder"
        )


def to_hf_dir(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    max_shard_size: int | str = "5GB",
    family: str | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face model folder (see :func:`to_hf`); returns its path.

    ``folder`` must not exist or be empty: an existing file or non-empty folder is never
    replaced (``FileExistsError`` naming it). The folder is written as a whole into a
    temporary sibling and renamed into place, so a kill leaves nothing loadable half-written.
    Weights past ``max_shard_size`` (bytes, or '500MB', '2GiB', ...) are split into shards
    listed by ``model.safetensors.index.json``.
    """
    folder = Path(folder)
    limit = _shard_bytes(max_shard_size)
    _check_target(folder)
    config, state = to_hf(model, family=family)
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(folder)
    tmp = _temp_sibling(folder, _SAVE_MARK)
    try:
        _write(tmp, config, state, limit)
        fsync_dir(tmp)
        _check_target(folder)
        os.rename(tmp, folder)  # replaces only a missing or empty folder, atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(folder.parent)
    return folder
