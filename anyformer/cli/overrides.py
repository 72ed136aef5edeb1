"""Reading a run's configuration: preset, config file (TOML or YAML), ``key=value`` overrides.

Layers apply in this order, later ones winning: the preset (``default`` unless ``--preset``),
the config file (``--config``), the ``key=value`` arguments, then explicit flags (``--data``).
A layer is a mapping of keys; ``model`` may hold a table of model keywords, ``model.KEY`` names
one, and any key that is not a training option is a model keyword.

Model keywords merge key by key, like every key (a config file's ``[model]`` table too: it adds
to the preset's, and ``anyformer train`` names the preset keys it keeps); a model keyword set to
``none`` is reset: it is dropped, so the library's default applies.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config.options import suggest
from .config import TRAIN_KEYS, TrainConfig, preset
from .errors import CLIError

__all__ = ["Layer", "load_config_file", "merge_layers", "parse_overrides", "parse_value"]

Layer = dict[str, Any]
_HINTS = typing.get_type_hints(TrainConfig)
_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
_NULLS = {"none", "null", "~"}


def parse_value(text: str) -> Any:
    """A model keyword's value from the command line: bool, None, int, float, JSON, else text."""
    low = text.strip().lower()
    if low in _WORDS:
        return _WORDS[low]
    if low in _NULLS:
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text[:1] in '[{"':
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"cannot parse {text!r} as JSON: {e}") from e
    return text


def _coerce(key: str, text: str) -> Any:
    """A training option's value from text, by the field's type."""
    hint = _HINTS[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    low = text.strip().lower()
    if optional and low in _NULLS:
        return None
    if base is str:
        return text
    if base is bool:
        if low in _WORDS:
            return _WORDS[low]
        raise CLIError(f"{key}={text}: expected true or false")
    if base is int:
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                value = None
            if value is not None and value.is_integer():
                return int(value)
            raise CLIError(f"{key}={text}: expected an integer") from None
    if base is float:
        try:
            return float(text)
        except ValueError:
            raise CLIError(f"{key}={text}: expected a number") from None
    return parse_value(text)


def parse_overrides(items: Sequence[str]) -> Layer:
    """``["steps=100", "dim=64", "model.heads=2"]`` -> a layer (typed values)."""
    layer: Layer = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"expected key=value, got {item!r} (e.g. steps=500 or dim=256)")
        if key in TRAIN_KEYS:
            layer[key] = _coerce(key, text)
        else:
            layer.setdefault("model", {})[key.removeprefix("model.")] = parse_value(text)
    return layer


MAX_CONFIG_BYTES = 1 << 20


def _read_text(path: Path) -> str:
    """A config file's text: UTF-8, at most 1 MiB; anything else is a one-line error."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise CLIError(f"config file {str(path)!r}: {e.strerror or e}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise CLIError(f"config file {str(path)!r} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CLIError(
            f"config file {str(path)!r} is not UTF-8 text (byte {raw[e.start]:#04x} at offset "
            f"{e.start})"
        ) from e


def _read_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise CLIError(
            f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use a .toml file"
        ) from None
    try:
        return yaml.safe_load(_read_text(path))
    except yaml.YAMLError as e:
        raise CLIError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from e


def _toml_module(path: Path) -> Any:
    """tomllib (Python >= 3.11), else the tomli package it came from."""
    try:
        return importlib.import_module("tomllib")
    except ImportError:  # Python 3.10
        try:
            import tomli

            return tomli
        except ImportError:
            raise CLIError(
                f"{path}: reading TOML on Python 3.10 needs tomli (pip install tomli), or use YAML"
            ) from None


def load_config_file(path: str | Path) -> Layer:
    """Read a ``.toml``, ``.yaml`` or ``.yml`` config file into a layer."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"config file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        toml = _toml_module(path)
        try:
            data = toml.loads(_read_text(path))
        except toml.TOMLDecodeError as e:
            raise CLIError(f"{path}: invalid TOML: {e}") from e
    elif suffix in (".yaml", ".yml"):
        data = _read_yaml(path)
    else:
        raise CLIError(f"{path}: config files must end in .toml, .yaml or .yml")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise CLIError(f"{path}: expected a table of keys at the top level")
    return _normalise(dict(data), str(path))


def _normalise(data: Mapping[str, Any], source: str) -> Layer:
    """Sort a flat or sectioned mapping into training keys and a ``model`` table."""
    layer: Layer = {}
    for key, value in data.items():
        if key == "model":
            if not isinstance(value, Mapping):
                raise CLIError(f"{source}: 'model' must be a table of model keywords")
            layer.setdefault("model", {}).update(value)
        elif key in TRAIN_KEYS:
            layer[key] = value
        else:
            layer.setdefault("model", {})[key.removeprefix("model.")] = value
    return layer


def merge_layers(*layers: Mapping[str, Any]) -> Layer:
    """Later layers win; ``model`` tables merge key by key; a model keyword set to None
    (``none``) is dropped, so the library's default applies."""
    out: Layer = {"model": {}}
    for layer in layers:
        for key, value in layer.items():
            if key == "model":
                out["model"].update(value)
            else:
                out[key] = value
    out["model"] = {k: v for k, v in out["model"].items() if v is not None}
    return out


def build_train_config(layer: Mapping[str, Any]) -> TrainConfig:
    """TrainConfig from a merged layer (``model`` excluded); bad values raise CLIError."""
    values = {k: v for k, v in layer.items() if k != "model"}
    unknown = [k for k in values if k not in TRAIN_KEYS]
    if unknown:  # cannot happen through parse/merge, but a caller may pass anything
        raise CLIError(f"unknown key {unknown[0]!r}.{suggest(unknown[0], TRAIN_KEYS)}")
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise CLIError(str(e).removeprefix("anyformer train: ")) from e


def resolve_layers(
    preset_name: str | None,
    config_file: str | None,
    overrides: Sequence[str],
    flags: Mapping[str, Any],
) -> Layer:
    """Merge preset, file, overrides and (non-None) flags into one layer."""
    layers = [preset(preset_name or "default")]
    if config_file:
        layers.append(load_config_file(config_file))
    layers.append(parse_overrides(overrides))
    layers.append({k: v for k, v in flags.items() if v is not None})
    return merge_layers(*layers)


def kept_preset_keys(
    preset_name: str | None, config_file: str | None, overrides: Sequence[str]
) -> dict[str, Any]:
    """The preset's model keywords a config file that sets model keywords leaves in place (none
    set by the file or a ``key=value``): empty without such a file."""
    if not config_file:
        return {}
    given = load_config_file(config_file).get("model", {})
    if not given:
        return {}
    later = set(given) | set(parse_overrides(overrides).get("model", {}))
    base = preset(preset_name or "default")["model"]
    return {k: v for k, v in base.items() if k not in later}


def train_config_dict(config: TrainConfig) -> dict[str, Any]:
    """A TrainConfig as a plain dict."""
    return dataclasses.asdict(config)
