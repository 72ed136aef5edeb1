"""MixtureOfExperts: a feedforward split into experts, each token sent through its top-k.

A linear router scores every expert per token (logits in full precision). Each token goes to its
``top_k`` experts with gate weights: the softmax over the top-k logits (Mixtral,
https://arxiv.org/abs/2401.04088; ``router_renormalize=True``, the default for top_k > 1), or the
top-k probabilities of the softmax over all experts (Switch, https://arxiv.org/abs/2101.03961;
DeepSeekMoE; the default for top_k = 1, where the renormalised gate would be 1 and the router
would learn from the aux losses only). Shared experts (DeepSeekMoE,
https://arxiv.org/abs/2401.06066) see every token and are added ungated.

Tokens are grouped by expert (a stable sort of the token-expert pairs) and every expert runs once
on its own tokens; nothing is computed for a pair that was not chosen. While training with a
``capacity_factor`` (GShard, https://arxiv.org/abs/2006.16668), an expert takes at most
``ceil(capacity_factor * tokens * top_k / num_experts)`` pairs, first choices before second
ones, then in token order (batch row by row); the pairs past that are dropped (their gate weight
is not given to another expert; a token dropped everywhere leaves only the shared experts and
the residual). Capacity couples the tokens of a batch (it counts them all, and a pair's place
depends on the pairs before it), so it applies while training only: evaluation and decoding
never drop, and stay causal and equal to cached decoding.

The aux losses of one call (when asked for, ``forward(x, losses=[...])``):
load balancing ``num_experts * sum_i f_i * P_i`` (Switch eq. 4; f_i the share of the
tokens * top_k routed pairs that chose expert i, before capacity; P_i the mean router probability
of expert i), which is 1 for a perfectly balanced router whatever top_k; and the router z-loss
``mean(logsumexp(logits) ** 2)`` (ST-MoE eq. 5, https://arxiv.org/abs/2202.08906). Padding
tokens are routed and counted like the others.

Eagerly, the tokens per expert are counted on the host (``tolist``). Under ``torch.compile``
(``torch.compiler.is_compiling()``) a static-shape path runs instead, so a mixture model traces
into one graph (``fullgraph=True``) and ``generate(compile=True)`` compiles it: every expert runs
on every token and the outputs are weighted by a dense (tokens, experts) gate matrix that is zero
off the chosen pairs. It equals the eager dispatch up to rounding but computes (and, decoding,
reads the weights of) all ``num_experts`` experts instead of ``top_k``: on CPU, compiled decoding
of a mixture is slower than eager decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.feedforward import FeedForwardConfig
from ..config.moe import expert_config
from .feedforward import FeedForward

if TYPE_CHECKING:
    from ..intermediates import LayerIntermediates

__all__ = [
    "MixtureOfExperts",
    "RouterLosses",
    "has_router_aux_loss",
    "mixture_summary",
    "record_router_losses",
]

_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class RouterLosses:
    """One mixture layer's aux losses for one call (unweighted) and their weighted sum."""

    load_balance: Tensor
    z: Tensor
    weighted: Tensor


class MixtureOfExperts(nn.Module):
    """``num_experts`` FeedForward experts behind a top-k router, plus shared experts."""

    def __init__(self, dim: int, config: FeedForwardConfig) -> None:
        super().__init__()
        if config.num_experts < 2:
            raise ValueError(
                f"MixtureOfExperts: num_experts must be >= 2, got {config.num_experts}"
            )
        self.config = config
        one = expert_config(config)
        self.num_experts = config.num_experts
        self.top_k = config.top_k
        renormalize = config.router_renormalize
        self.renormalize = config.top_k > 1 if renormalize is None else renormalize
        self.capacity_factor = config.capacity_factor
        self.loss_weights = (config.load_balance_loss_weight, config.router_z_loss_weight)
        self.router = nn.Linear(dim, config.num_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(dim, config=one) for _ in range(self.num_experts))
        self.shared_experts = nn.ModuleList(
            FeedForward(dim, config=one) for _ in range(config.num_shared_experts)
        )

    def extra_repr(self) -> str:
        return (
            f"top_k={self.top_k}, renormalize={self.renormalize}, "
            f"capacity_factor={self.capacity_factor}"
        )

    def forward(self, x: Tensor, losses: list[RouterLosses] | None = None) -> Tensor:
        """x (..., dim) -> (..., dim); ``losses``: a list the call's RouterLosses is appended to."""
        tokens = x.reshape(-1, x.shape[-1])
        logits = self.router(tokens)
        logits = logits.float() if logits.dtype in _HALF else logits  # (T, E), full precision
        gates, chosen = self.route(logits)
        keep = None
        if self.training and self.capacity_factor is not None:
            keep = self.within_capacity(chosen)
        if torch.compiler.is_compiling():
            out = self.dispatch_static(tokens, gates, chosen, keep)
        else:
            out = self.dispatch(tokens, gates, chosen, keep)
        for shared in self.shared_experts:
            out = out + shared(tokens)
        if losses is not None:
            losses.append(self.router_losses(logits, chosen))
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def route(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Router logits (T, E) -> gate weights (T, k) and chosen experts (T, k), best first."""
        top, chosen = logits.topk(self.top_k, dim=-1)
        if self.renormalize:
            return top.softmax(dim=-1), chosen
        return logits.softmax(dim=-1).gather(-1, chosen), chosen

    def capacity(self, num_tokens: int) -> int:
        """Routed pairs one expert takes while training (capacity_factor set)."""
        factor = self.capacity_factor or 0.0
        return math.ceil(factor * num_tokens * self.top_k / self.num_experts)

    def within_capacity(self, chosen: Tensor) -> Tensor:
        """(T, k) True where the pair fits its expert's capacity: first choices queue first, then
        second choices, each in token order."""
        t, k = chosen.shape
        by_rank = F.one_hot(chosen.t().reshape(-1), self.num_experts)  # (k * T, E)
        place = ((by_rank.cumsum(0) - 1) * by_rank).sum(-1)  # place in its expert's queue
        keep = place < self.capacity(t)
        return keep.view(k, t).t()

    def dispatch(
        self, tokens: Tensor, gates: Tensor, chosen: Tensor, keep: Tensor | None = None
    ) -> Tensor:
        """Each expert on the tokens routed to it, outputs weighted and summed per token.
        ``keep`` (T, k): the pairs within capacity (None: all)."""
        k = self.top_k
        flat = chosen.reshape(-1)
        weight = gates.reshape(-1)
        pairs = torch.argsort(flat, stable=True)  # routed pairs grouped by expert
        if keep is not None:
            pairs = pairs[keep.reshape(-1)[pairs]]  # dropped pairs are not computed
        counts = torch.bincount(flat[pairs], minlength=self.num_experts).tolist()
        token_of = pairs // k
        grouped = tokens.index_select(0, token_of).split(counts)
        parts = [
            expert(part)
            for expert, part in zip(self.experts, grouped)
            if part.shape[0] or torch.is_grad_enabled()  # every expert in the graph (DDP)
        ]
        ys = torch.cat(parts) if parts else tokens.new_zeros(0, tokens.shape[-1])
        ys = ys * weight[pairs].to(ys.dtype).unsqueeze(-1)
        out = ys.new_zeros(tokens.shape[0], ys.shape[-1])
        return out.index_add_(0, token_of, ys)

    def dispatch_static(
        self, tokens: Tensor, gates: Tensor, chosen: Tensor, keep: Tensor | None = None
    ) -> Tensor:
        """:meth:`dispatch` with static shapes (for ``torch.compile``): every expert on every
        token, weighted by a dense (tokens, experts) gate matrix that is zero off the chosen
        (and kept) pairs."""
        if keep is not None:
            gates = gates * keep
        dense = gates.new_zeros(tokens.shape[0], self.num_experts).scatter_add(1, chosen, gates)
        out = tokens.new_zeros(tokens.shape[0], tokens.shape[-1])
        for i, expert in enumerate(self.experts):
            y = expert(tokens)
            out = out + y * dense[:, i : i + 1].to(y.dtype)
        return out

    def router_losses(self, logits: Tensor, chosen: Tensor) -> RouterLosses:
        """The load-balancing loss (Switch) and the router z-loss (ST-MoE) of this call."""
        probs = logits.softmax(dim=-1).mean(0)  # P_i
        flat = chosen.reshape(-1)
        counts = torch.zeros(self.num_experts, dtype=torch.long, device=flat.device)
        counts = counts.scatter_add(0, flat, torch.ones_like(flat))
        share = counts.to(probs.dtype) / chosen.numel()  # f_i
        balance = self.num_experts * (share * probs).sum()
        z = torch.logsumexp(logits, dim=-1).square().mean()
        w_balance, w_z = self.loss_weights
        return RouterLosses(balance, z, w_balance * balance + w_z * z)


def record_router_losses(
    inter: LayerIntermediates, losses: list[RouterLosses]
) -> LayerIntermediates:
    """Write a forward's router losses into its intermediates (``aux_loss``,
    ``load_balance_loss``, ``router_z_loss``), each the mean over the mixture layers'
    executions; without any, the intermediates are returned as they are."""
    if losses:
        count = len(losses)
        inter.aux_loss = torch.stack([r.weighted for r in losses]).sum() / count
        inter.load_balance_loss = torch.stack([r.load_balance for r in losses]).sum() / count
        inter.router_z_loss = torch.stack([r.z for r in losses]).sum() / count
    return inter


def has_router_aux_loss(net: nn.Module) -> bool:
    """Whether ``net`` holds a mixture layer whose aux loss has a non-zero weight."""
    return any(
        isinstance(m, MixtureOfExperts) and any(w > 0 for w in m.loss_weights)
        for m in net.modules()
    )


def mixture_summary(net: nn.Module) -> dict[str, Any] | None:
    """What ``capabilities()`` reports of the mixture layers in ``net`` (None: there are none):
    their number, experts (routed, shared), top_k, whether capacity drops tokens (while
    training only), whether an aux loss is weighted in, and that generate's lean decoding loop
    (``anyformer.stack.lean``) is off: a mixture layer decodes through the plain blocks."""
    layers = [m for m in net.modules() if isinstance(m, MixtureOfExperts)]
    if not layers:
        return None
    first = layers[0]
    return {
        "layers": len(layers),
        "num_experts": first.num_experts,
        "num_shared_experts": len(first.shared_experts),
        "top_k": first.top_k,
        "renormalize": first.renormalize,
        "capacity_drops_tokens": "training" if first.capacity_factor is not None else False,
        "aux_loss": has_router_aux_loss(net),
        "lean_decoding": False,
    }
