"""Shared machinery for keyword parsing: documented fields, type checks, did-you-mean."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = [
    "build_options",
    "check_fields",
    "current_prefix",
    "from_dict",
    "keyword_names",
    "keyword_prefix",
    "keyword_side",
    "option",
    "option_docs",
    "suggest",
    "to_dict",
    "unknown_keyword",
]


_PREFIX: ContextVar[str | None] = ContextVar("anyformer_keyword_prefix", default=None)
_SIDE: ContextVar[str] = ContextVar("anyformer_keyword_side", default="")


@contextmanager
def keyword_prefix(prefix: str) -> Iterator[None]:
    """Within this block, config errors name keywords with `prefix` (e.g. 'cross_attn_')."""
    token = _PREFIX.set(prefix)
    try:
        yield
    finally:
        _PREFIX.reset(token)


@contextmanager
def keyword_side(side: str) -> Iterator[None]:
    """Within this block, config errors name every keyword with `side` first: the keywords of
    one side of an XTransformer (``enc_`` / ``dec_``) as the user wrote them."""
    token = _SIDE.set(side)
    try:
        yield
    finally:
        _SIDE.reset(token)


def current_prefix(default: str = "") -> str:
    """How a keyword is written here: the side (keyword_side), then the prefix set by
    keyword_prefix(), else `default` (e.g. 'dec_' + 'attn_')."""
    prefix = _PREFIX.get()
    return _SIDE.get() + (default if prefix is None else prefix)


def option(default: Any, doc: str, paper: str | None = None) -> Any:
    """A dataclass field with a one-line doc and, where one exists, the paper it comes from."""
    if isinstance(default, (dict, list, set)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"doc": doc, "paper": paper}
        )
    return dataclasses.field(default=default, metadata={"doc": doc, "paper": paper})


def option_docs(cls: type) -> dict[str, str]:
    """Map each field of a config dataclass to its one-line doc (with the paper link)."""
    out = {}
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc", "")
        paper = f.metadata.get("paper")
        out[f.name] = f"{doc} ({paper})" if paper else doc
    return out


def suggest(name: str, candidates: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix naming the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def keyword_names(*functions: Callable[..., Any], skip: Iterable[str] = ()) -> list[str]:
    """The names the functions take by keyword, in order and once each (not ``self``,
    ``*args`` / ``**kwargs``, nor ``skip``): what a forward accepts, read from its signature."""
    skipped = {"self", *skip}
    names: list[str] = []
    for function in functions:
        for name, param in inspect.signature(function).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                continue
            if name not in skipped and name not in names:
                names.append(name)
    return names


def unknown_keyword(owner: str, name: str, candidates: Iterable[str]) -> TypeError:
    """The TypeError raised for a keyword that no option of `owner` accepts."""
    return TypeError(
        f"{owner} got an unexpected keyword argument {name!r}.{suggest(name, candidates)}"
    )


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(args, value))
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, Mapping)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _finite(value: Any) -> bool:
    """False for a NaN or infinite float (alone or in a tuple): no option means anything there."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    return True


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def check_fields(config: Any, owner: str, prefix: str | None = None) -> None:
    """Check every field of a frozen config against its annotation; ints become floats where
    asked. Errors name a field as ``prefix`` + its name (default: :func:`current_prefix`)."""
    prefix = current_prefix() if prefix is None else prefix
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(value):
            continue
        if not _matches(value, hint):
            raise TypeError(
                f"{owner}: {prefix}{f.name} must be {_type_name(hint)}, "
                f"got {value!r} ({type(value).__name__})"
            )
        if not _finite(value):
            raise ValueError(f"{owner}: {prefix}{f.name} must be finite, got {value!r}")
        if hint is float and isinstance(value, int):
            object.__setattr__(config, f.name, float(value))
        elif isinstance(value, Mapping) and not isinstance(value, dict):
            object.__setattr__(config, f.name, dict(value))


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON-friendly dict of a (nested) config dataclass."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [convert(x) for x in v]
        if isinstance(v, Mapping):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(config)


def build_options(
    cls: type,
    owner: str,
    kwargs: Mapping[str, Any],
    *,
    prefix: str = "",
    later: Mapping[str, str] | None = None,
    valid: Iterable[str] | None = None,
    base: Any = None,
) -> Any:
    """The one keyword parser: check names against `cls`'s fields and build the frozen config.

    Known-but-unimplemented names (`later`) raise NotImplementedError; unknown names raise a
    TypeError whose did-you-mean draws only on `valid` (default: this owner's own keywords).
    With `base`, the result is `base` with the given fields replaced.
    """
    from .later import raise_if_later

    names = [f.name for f in dataclasses.fields(cls)]
    raise_if_later(owner, kwargs, later or {}, prefix)
    for name in kwargs:
        if name not in names:
            candidates = valid if valid is not None else [prefix + n for n in names]
            raise unknown_keyword(owner, prefix + name, candidates)
    with keyword_prefix(prefix):
        if base is not None:
            return dataclasses.replace(base, **kwargs)
        return cls(**kwargs)


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from `to_dict`'s output; unknown keys raise."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__}: expected a dict of options, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"{cls.__name__}: the configuration has unknown options {unknown} "
            "(written by a newer anyformer?)"
        )
    values = {}
    for name, value in data.items():
        values[name] = _from_plain(hints[name], value)
    return cls(**values)


def _from_plain(hint: Any, value: Any) -> Any:
    """JSON-friendly value -> the annotated type (dataclasses, tuples)."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_dict(hint, value)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for h in typing.get_args(hint):
            if h is type(None) and value is None:
                return None
        for h in typing.get_args(hint):
            if h is not type(None):
                converted = _from_plain(h, value)
                if _matches(converted, h):
                    return converted
        return value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v) for v in value)
        return tuple(_from_plain(a, v) for a, v in zip(args, value))
    return value
