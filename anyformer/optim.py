"""Parameter groups for the Muon optimiser (https://kellerjordan.github.io/posts/muon/; at scale
with QK-clip: MuonClip, https://arxiv.org/abs/2507.20534).

Muon orthogonalises the update of a 2-D hidden weight matrix; everything else (embeddings, the
output head, norms, biases, gains, scalars, routers, positional tables) goes to an element-wise
optimiser such as AdamW. ``muon_parameters`` is x-transformers 2.x's method of that name, with
one difference: 2.x lists only the value and output projections of an attention layer, while
anyformer fuses queries, keys and values into one matrix (``qkv.to_qkv``) and lists it whole,
with every other projection matrix of the layer (value / output gates, low-rank or latent
projections).
"""

from __future__ import annotations

from torch import nn

from .nn.attention import Attention
from .nn.feedforward import FeedForward

__all__ = ["muon_parameter_groups", "muon_parameters"]


def muon_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every 2-D parameter (projection matrix) inside an attention or feed-forward layer of
    ``model`` (value gates and mixture-of-experts experts included, their router not), once
    each, in module order. Biases, norms, embeddings and the head (outside those layers) are
    not listed."""
    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for layer in model.modules():
        if not isinstance(layer, (Attention, FeedForward)):
            continue
        for weight in layer.parameters():
            if weight.ndim == 2 and id(weight) not in seen:
                seen.add(id(weight))
                out.append(weight)
    return out


def muon_parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon's parameters, the others): every trainable parameter of ``model`` in exactly one of
    the two lists (a tied weight once), e.g. ``Muon(muon), AdamW(others)``."""
    muon = muon_parameters(model)
    chosen = {id(p) for p in muon}
    muon = [p for p in muon if p.requires_grad]
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    return muon, others
