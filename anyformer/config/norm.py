"""NormConfig: which normalisation every block of a stack uses (kind, eps, bias), including
the norms conditioned on a vector (adaptive LayerNorm / RMSNorm) and DyT in place of a norm."""

from __future__ import annotations

from dataclasses import dataclass

from .options import check_fields, current_prefix, option

__all__ = ["NormConfig"]

#: Default epsilon per norm kind when ``norm_eps`` is not given. The RMS-style norms of
#: x-transformers have no epsilon (``F.normalize`` clamps the norm at 1e-12); 1e-12 under the
#: square root gives the same values to float32 precision and no NaN on an all-zero row.
DEFAULT_EPS = {
    "layernorm": 1e-5,
    "scalenorm": 1e-12,
    "rmsnorm": 1e-12,
    "simple_rmsnorm": 1e-12,
    "adaptive_layernorm": 1e-5,
    "adaptive_rmsnorm": 1e-12,
    "dynamic_tanh": 0.0,  # no normalisation, no epsilon
}

#: the keywords that each choose the norm kind, and that kind
KINDS = {
    "use_scalenorm": "scalenorm",
    "use_rmsnorm": "rmsnorm",
    "use_simple_rmsnorm": "simple_rmsnorm",
    "use_dynamic_tanh": "dynamic_tanh",
    "use_adaptive_layernorm": "adaptive_layernorm",
    "use_adaptive_rmsnorm": "adaptive_rmsnorm",
}


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
    use_dynamic_tanh: bool = option(
        False,
        "DyT in place of every norm: weight * tanh(alpha * x) + bias, alpha a learned scalar",
        "https://arxiv.org/abs/2503.10622",
    )
    dynamic_tanh_init_alpha: float = option(1.0, "DyT: initial alpha")
    use_adaptive_layernorm: bool = option(
        False,
        "adaptive LayerNorm: the gain is 1 + a linear map of forward's condition vector (DiT)",
        "https://arxiv.org/abs/2212.09748",
    )
    use_adaptive_rmsnorm: bool = option(
        False,
        "adaptive RMSNorm: the gain is 1 + a linear map of forward's condition vector",
        "https://arxiv.org/abs/2212.09748",
    )
    dim_condition: int | None = option(
        None, "width of forward's condition vector (adaptive norms / layerscale; None: dim)"
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
        chosen = [n for n in KINDS if getattr(self, n)]
        if len(chosen) > 1:
            raise ValueError(
                f"AttentionLayers: {' and '.join(f'{p}{n}=True' for n in chosen)} each choose the "
                "norm; set only one"
            )
        if self.dim_condition is not None and not self.dim_condition >= 1:
            raise ValueError(
                f"AttentionLayers: {p}dim_condition must be >= 1, got {self.dim_condition}"
            )
        if not self.dynamic_tanh_init_alpha > 0:
            raise ValueError(
                f"AttentionLayers: {p}dynamic_tanh_init_alpha must be > 0, got "
                f"{self.dynamic_tanh_init_alpha}"
            )
        if self.norm_bias and chosen:
            raise ValueError(
                f"AttentionLayers: {p}norm_bias=True is a LayerNorm option; {p}{chosen[0]}=True "
                "has no bias"
            )

    @property
    def kind(self) -> str:
        """The norm class the blocks use: layernorm, scalenorm, rmsnorm, simple_rmsnorm,
        dynamic_tanh, adaptive_layernorm or adaptive_rmsnorm."""
        return next((kind for name, kind in KINDS.items() if getattr(self, name)), "layernorm")

    @property
    def conditioned(self) -> bool:
        """Whether the norms read forward's condition vector (adaptive norms)."""
        return self.kind.startswith("adaptive_")

    @property
    def eps(self) -> float:
        """The epsilon the norms use (norm_eps, or the kind's default)."""
        return DEFAULT_EPS[self.kind] if self.norm_eps is None else self.norm_eps
