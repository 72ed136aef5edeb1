"""One decoding method taking another's parameters (``stream`` takes ``generate``'s).

The parameters are written once, on ``generate``; ``stream`` is declared with
``@keywords_of(generate, drop="return_intermediates")``. Its callers see (in ``help``,
``inspect.signature`` and type checkers) generate's parameters, positional order included; the
method itself receives them bound, defaults applied, as one dict.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

__all__ = ["keywords_of"]

P = ParamSpec("P")
R = TypeVar("R")


def keywords_of(
    source: Callable[P, Any], drop: str
) -> Callable[[Callable[[Any, dict[str, Any]], R]], Callable[P, R]]:
    """Decorate ``method(self, arguments)`` to be called with `source`'s parameters but `drop`
    (a keyword not taken: passed anyway, it lands in the variable keywords as before)."""
    signature = inspect.signature(source)
    if drop not in signature.parameters:
        raise ValueError(f"keywords_of: {source.__name__} has no parameter {drop!r}")
    params = [p for p in signature.parameters.values() if p.name != drop]

    def decorate(method: Callable[[Any, dict[str, Any]], R]) -> Callable[P, R]:
        shared = signature.replace(
            parameters=params, return_annotation=inspect.signature(method).return_annotation
        )

        @functools.wraps(method)
        def bound(*args: Any, **kwargs: Any) -> R:
            try:
                arguments = shared.bind(*args, **kwargs)
            except TypeError as error:
                raise TypeError(f"{method.__name__}(): {error}") from None
            arguments.apply_defaults()
            values = dict(arguments.arguments)
            return method(values.pop("self"), values)

        bound.__signature__ = shared  # type: ignore[attr-defined]
        return cast(Callable[P, R], bound)

    return decorate
