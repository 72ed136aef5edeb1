"""NormConfig: which normalisation every block of a stack uses (kind, eps, bias)."""

from __future__ import annotations

from dataclasses import dataclass

from .options import check_fields, option

__all__ = ["NormConfig"]


@dataclass(frozen=True)
class NormConfig:
    """Norm options of a stack; stack-level keywords whose names are these fields land here."""

    norm_eps: float = option(1e-5, "epsilon of every norm in the stack")
    norm_bias: bool = option(
        False, "LayerNorm with a learned bias (GPT-2, BERT); the seed design has none"
    )

    def __post_init__(self) -> None:
        check_fields(self, "AttentionLayers")
        if not self.norm_eps > 0:
            raise ValueError(f"AttentionLayers: norm_eps must be > 0, got {self.norm_eps}")

    @property
    def kind(self) -> str:
        """The norm class the blocks use."""
        return "layernorm"
