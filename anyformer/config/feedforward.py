"""FeedForwardConfig: the options of the position-wise feedforward (``ff_*`` on a stack)."""

from __future__ import annotations

from dataclasses import dataclass

from .options import check_fields, current_prefix, option

__all__ = ["FeedForwardConfig"]


@dataclass(frozen=True)
class FeedForwardConfig:
    """Feedforward options; each field is one x-transformers ``ff_*`` keyword."""

    mult: float = option(4, "hidden width = int(dim * mult)")
    inner_dim: int | None = option(None, "explicit hidden width, overriding mult (GPT-2's n_inner)")
    glu: bool = option(
        False, "gated linear unit: act(gate) * value", "https://arxiv.org/abs/2002.05202"
    )
    glu_mult_bias: bool = option(False, "learned per-channel multiplier on the GLU output")
    swish: bool = option(
        False, "SiLU activation (with glu: SwiGLU)", "https://arxiv.org/abs/2204.02311"
    )
    gelu_tanh: bool = option(
        False,
        "GELU with the tanh approximation (GPT-2's gelu_new)",
        "https://arxiv.org/abs/1606.08415",
    )
    relu_squared: bool = option(
        False, "ReLU squared activation (Primer)", "https://arxiv.org/abs/2109.08668"
    )
    post_act_ln: bool = option(
        False, "LayerNorm after the activation (NormFormer)", "https://arxiv.org/abs/2110.09456"
    )
    dropout: float = option(0.0, "dropout after the activation")
    no_bias: bool = option(False, "no bias in the feedforward linears (PaLM)")
    zero_init_output: bool = option(False, "zero-initialise the output projection")

    def __post_init__(self) -> None:
        p = current_prefix("ff_")
        check_fields(self, "FeedForward", p)
        if self.mult <= 0:
            raise ValueError(f"FeedForward: {p}mult must be > 0, got {self.mult}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FeedForward: {p}dropout must be in [0, 1), got {self.dropout}")
        chosen = [n for n in ("relu_squared", "swish", "gelu_tanh") if getattr(self, n)]
        if len(chosen) > 1:
            names = " and ".join(f"{p}{n}=True" for n in chosen)
            raise ValueError(f"FeedForward: {names} each choose the activation; set only one")
        if self.inner_dim is not None and self.inner_dim < 1:
            raise ValueError(f"FeedForward: {p}inner_dim must be >= 1, got {self.inner_dim}")
        if self.glu_mult_bias and not self.glu:
            raise ValueError(f"FeedForward: {p}glu_mult_bias=True needs {p}glu=True")
