"""LayerIntermediates: what a stack can report besides its output (and the cache it filled)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .cache import KVCache
from .nn.attend import Intermediates

__all__ = ["Intermediates", "LayerIntermediates"]


@dataclass
class LayerIntermediates:
    """Hidden states, per-layer attention intermediates and the KV cache of one forward."""

    hiddens: list[Tensor] = field(default_factory=list)  # inputs of each self-attention layer
    last_hidden: Tensor | None = None  # stack output after the final norm
    attn_intermediates: list[Intermediates] = field(default_factory=list)
    layer_hiddens: list[Tensor] = field(default_factory=list)  # input of every layer, then output
    attn_z_loss: Tensor | None = None
    # mixture of experts (ff_num_experts): each the mean over the mixture layers of this forward
    aux_loss: Tensor | None = None  # ff_load_balance_loss_weight * lb + ff_router_z_loss_weight * z
    load_balance_loss: Tensor | None = None  # Switch: num_experts * sum_i f_i * P_i
    router_z_loss: Tensor | None = None  # ST-MoE: mean(logsumexp(router logits) ** 2)
    mems: list[Tensor] | None = None
    memory_tokens: Tensor | None = None
    # use_cls_token / average_pool_embed: the stack's output rows of the positions (no CLS rows)
    last_layer_hiddens: Tensor | None = None
    cache: KVCache | None = None  # pass back as forward(cache=...) to continue decoding

    @property
    def cache_length(self) -> int:
        """Number of positions held by the cache (0 without one)."""
        return 0 if self.cache is None else self.cache.length
