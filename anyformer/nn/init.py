"""Initialisation as a pass of its own, so a model built on the meta device can be materialised.

Every module that owns parameters or computed buffers defines ``reset_parameters()`` for what it
owns (torch's Linear, Embedding and LayerNorm already do); its constructor calls it. The pass
below visits children before parents, as construction does, and skips a module whose own
parameters were all initialised already under another name (tied weights keep their first init).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

__all__ = ["reset_module_tree"]


def _post_order(module: nn.Module, seen: set[int]) -> Iterator[nn.Module]:
    if id(module) in seen:
        return
    seen.add(id(module))
    for child in module.children():
        yield from _post_order(child, seen)
    yield module


def reset_module_tree(root: nn.Module) -> None:
    """Call every submodule's own ``reset_parameters`` (children first); tied weights once.

    Composite models (``_resets_tree = True``: stacks and wrappers, whose ``reset_parameters``
    starts this pass) contribute only their ``_reset_own_parameters`` if they define one.
    """
    for module in root.modules():
        tie = getattr(module, "tie_weights", None)
        if tie is not None:
            tie()  # moving off the meta device (to_empty) unties shared parameters
    done: set[int] = set()
    for module in _post_order(root, set()):
        if getattr(module, "_resets_tree", False):
            reset = getattr(module, "_reset_own_parameters", None)
        else:
            reset = getattr(module, "reset_parameters", None)
        if reset is None:
            continue
        own = [id(p) for p in module.parameters(recurse=False)]
        if own and all(i in done for i in own):
            continue  # a tied weight, initialised where it was first defined
        reset()
        done.update(own)
