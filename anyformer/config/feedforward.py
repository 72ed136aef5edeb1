"""FeedForwardConfig: the options of the position-wise feedforward (``ff_*`` on a stack)."""

from __future__ import annotations

from dataclasses import dataclass

from .moe import check_experts
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
    relu: bool = option(
        False,
        "ReLU activation (the original Transformer, T5 v1.0; with glu: ReGLU)",
        "https://arxiv.org/abs/1706.03762",
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
    # --- mixture of experts (config/moe.py checks how these combine; nn/moe.py runs them) ---
    num_experts: int = option(
        1,
        "mixture of experts: > 1 turns the feedforward into this many experts (each the "
        "feedforward the other ff_* options describe) with a learned top-k router",
        "https://arxiv.org/abs/2101.03961",
    )
    top_k: int = option(
        2, "mixture of experts: experts each token is routed to", "https://arxiv.org/abs/2401.04088"
    )
    num_shared_experts: int = option(
        0,
        "mixture of experts: experts every token also goes through, ungated (DeepSeekMoE)",
        "https://arxiv.org/abs/2401.06066",
    )
    capacity_factor: float | None = option(
        None,
        "mixture of experts, while training: each expert takes at most "
        "ceil(factor * tokens * top_k / num_experts) tokens, first choices first, then in "
        "token order; the rest are dropped for that expert (None: no capacity)",
        "https://arxiv.org/abs/2006.16668",
    )
    router_renormalize: bool | None = option(
        None,
        "mixture of experts: gate weights are the softmax over the top-k logits (True, "
        "Mixtral) or the top-k of the softmax over all experts (False, Switch / DeepSeekMoE); "
        "None: True when top_k > 1",
        "https://arxiv.org/abs/2401.04088",
    )
    load_balance_loss_weight: float = option(
        0.01,
        "mixture of experts: weight of the load-balancing loss num_experts * sum_i f_i * P_i "
        "in the aux loss (f_i: share of routed slots, P_i: mean router probability)",
        "https://arxiv.org/abs/2101.03961",
    )
    router_z_loss_weight: float = option(
        0.001,
        "mixture of experts: weight of the router z-loss mean(logsumexp(router logits)^2) in "
        "the aux loss",
        "https://arxiv.org/abs/2202.08906",
    )

    def __post_init__(self) -> None:
        p = current_prefix("ff_")
        check_fields(self, "FeedForward", p)
        if self.mult <= 0:
            raise ValueError(f"FeedForward: {p}mult must be > 0, got {self.mult}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FeedForward: {p}dropout must be in [0, 1), got {self.dropout}")
        chosen = [n for n in ("relu", "relu_squared", "swish", "gelu_tanh") if getattr(self, n)]
        if len(chosen) > 1:
            names = " and ".join(f"{p}{n}=True" for n in chosen)
            raise ValueError(f"FeedForward: {names} each choose the activation; set only one")
        if self.inner_dim is not None and self.inner_dim < 1:
            raise ValueError(f"FeedForward: {p}inner_dim must be >= 1, got {self.inner_dim}")
        if self.glu_mult_bias and not self.glu:
            raise ValueError(f"FeedForward: {p}glu_mult_bias=True needs {p}glu=True")
        check_experts(self, p)
