"""What every model built from (its own config, an attention stack) shares: rebuilding from
``config_dict()``, reporting it, and re-initialising as one pass."""

from __future__ import annotations

from typing import Any, ClassVar, cast

from torch import nn

from ..config.options import from_dict, to_dict
from ..nn.init import reset_module_tree
from ..stack.layers import AttentionLayers

__all__ = ["StackedModel"]


class StackedModel:
    """Mixin for ``nn.Module`` classes holding ``self.config`` (a ``config_class``) and
    ``self.attn_layers``, built by ``self._setup(config, attn_layers)``."""

    config_class: ClassVar[type]
    config: Any
    attn_layers: AttentionLayers
    _resets_tree = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Rebuild a model from ``config_dict()``: same modules, same state-dict keys."""
        data = dict(config)
        name = data.pop("class", cls.__name__)
        if name != cls.__name__:
            raise ValueError(f"{cls.__name__}.from_config: got a configuration of class {name!r}")
        if "attn_layers" not in data:
            raise ValueError(f"{cls.__name__}.from_config: the configuration has no 'attn_layers'")
        attn_layers = AttentionLayers.from_config(data.pop("attn_layers"))
        model: Any = cls.__new__(cls)
        nn.Module.__init__(model)
        model._setup(from_dict(cls.config_class, data), attn_layers)
        return model

    def config_dict(self) -> dict[str, Any]:
        """The resolved configuration as a plain dict."""
        return {
            "class": type(self).__name__,
            **to_dict(self.config),
            "attn_layers": self.attn_layers.config_dict(),
        }

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (e.g. after building on the meta device)."""
        reset_module_tree(cast(nn.Module, self))
