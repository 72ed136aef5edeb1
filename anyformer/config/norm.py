"""NormConfig: which normalisation every block of a stack uses (kind, eps, bias)."""

from __future__ import annotations

from dataclasses import dataclass

from .options import check_fields, current_prefix, option

__all__ = ["NormConfig"]

#: Default epsilon per norm kind when ``norm_eps`` is not given. The RMS-style norms of
#: x-transformers have no epsilon (``F.normalize`` clamps the norm at 1e-12); 1e-12 under the
#: square root gives the same values to float32 precision and no NaN on an all-zero row.
DEFAULT_EPS = {"layernorm": 1e-5, "scalenorm": 1e-12, "rmsnorm": 1e-12, "simple_rmsnorm": 1e-12}


@dataclass(frozen=True)
class NormConfig:
    """Norm options of a stack; stack-level keywords whose names are these fields land here."""

    use_scalenorm: bool = option(
        False,
        "ScaleNorm: x / rms(x) * one learned scalar",
        "https://arxiv.org/abs/1910.05895",
    )
    use_rmsnorm: bool = option(
        False, "RMSNorm: x / rms(x) * learned per-channel gain", "https://arxiv.org/abs/1910.07467"
    )
    use_simple_rmsnorm: bool = option(
        False, "RMSNorm without a learned gain (TransNormer)", "https://arxiv.org/abs/2307.14995"
    )
    norm_eps: float | None = option(
        None,
        "epsilon of every norm in the stack, added to the variance / mean square "
        "(None: 1e-5 for LayerNorm, 1e-12 for the RMS-style norms, as x-transformers)",
    )
    norm_bias: bool = option(
        False, "LayerNorm with a learned bias (GPT-2, BERT); the seed design has none"
    )

    def __post_init__(self) -> None:
        p = current_prefix()
        check_fields(self, "AttentionLayers", p)
        if self.norm_eps is not None and not self.norm_eps > 0:
            raise ValueError(f"AttentionLayers: {p}norm_eps must be > 0, got {self.norm_eps}")
        chosen = [
            n for n in ("use_scalenorm", "use_rmsnorm", "use_simple_rmsnorm") if getattr(self, n)
        ]
        if len(chosen) > 1:
            raise ValueError(
                f"AttentionLayers: {' and '.join(f'{p}{n}=True' for n in chosen)} each choose the "
                "norm; set only one"
            )
        if self.norm_bias and chosen:
            raise ValueError(
                f"AttentionLayers: {p}norm_bias=True is a LayerNorm option; {p}{chosen[0]}=True "
                "has no bias"
            )

    @property
    def kind(self) -> str:
        """The norm class the blocks use: layernorm, scalenorm, rmsnorm or simple_rmsnorm."""
        if self.use_scalenorm:
            return "scalenorm"
        if self.use_rmsnorm:
            return "rmsnorm"
        if self.use_simple_rmsnorm:
            return "simple_rmsnorm"
        return "layernorm"

    @property
    def eps(self) -> float:
        """The epsilon the norms use (norm_eps, or the kind's default)."""
        return DEFAULT_EPS[self.kind] if self.norm_eps is None else self.norm_eps
