"""anyformer beside x-transformers 2.x (the release in ``tests/xt2.py``) from the same keywords
and the same weights: the oracle of keywords added after 1.28 (not a test file).

    ours, theirs = pair("Decoder", dict(use_rmsnorm=True, add_value_residual=True))
    assert max_logit_diff(ours, theirs, tokens()) <= TOL

``pair`` builds the 2.x model, perturbs every parameter (so zero- or one-initialised gains,
gates and mixes are exercised), copies its state_dict into the anyformer model with
``load_x_transformers_state_dict(..., version=2)`` and puts both in eval mode. Defaults that
differ between the releases are passed explicitly to both (``explicit``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from xt2 import xt2

import anyformer as af
from anyformer.convert import load_x_transformers_state_dict

TOL = 1e-5  # float32 logits agree to this
NUM_TOKENS = 64
MAX_SEQ_LEN = 32
#: the stack keywords every pair gets unless it gives its own (small and fast)
BASE = dict(dim=32, depth=2, heads=2, attn_dim_head=16)
#: keywords of 2.x only (given to the 2.x model, not to anyformer): the layout options
THEIRS_ONLY = ("norm_add_unit_offset", "verbose")


def explicit(stack_kw: dict[str, Any]) -> dict[str, Any]:
    """``stack_kw`` with the defaults that differ between 1.28.x (anyformer's) and 2.x spelled
    out: the rotary dimension (2.x: dim_head // 2; 1.28.x: at least 32)."""
    kw = {**BASE, **stack_kw}
    rotary = kw.get("rotary_pos_emb") or kw.get("rotary_xpos")
    if rotary and "rotary_emb_dim" not in kw:
        kw["rotary_emb_dim"] = kw.get("attn_dim_head", 64) // 2
    return kw


def perturb_(model: nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Add N(0, scale^2) noise to every parameter (deterministic in ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def pair(
    kind: str = "Decoder",
    stack_kw: dict[str, Any] | None = None,
    wrapper_kw: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    scale: float = 0.1,
) -> tuple[nn.Module, nn.Module]:
    """(anyformer TransformerWrapper, 2.x TransformerWrapper) built from the same keywords
    (``kind``: Decoder, Encoder, ...), the 2.x weights perturbed and loaded into ours; eval."""
    X = xt2()
    kw = explicit(stack_kw or {})
    wkw = dict(num_tokens=NUM_TOKENS, max_seq_len=MAX_SEQ_LEN, **(wrapper_kw or {}))
    torch.manual_seed(seed)
    theirs = X.TransformerWrapper(**wkw, attn_layers=getattr(X, kind)(verbose=False, **kw))
    perturb_(theirs, seed, scale)
    ours_kw = {k: v for k, v in kw.items() if k not in THEIRS_ONLY}
    ours = af.TransformerWrapper(**wkw, attn_layers=getattr(af, kind)(**ours_kw))
    offset = kw.get("norm_add_unit_offset", True)
    load_x_transformers_state_dict(
        ours, theirs.state_dict(), version=2, norm_add_unit_offset=offset
    )
    return ours.eval(), theirs.eval()


def tokens(batch: int = 2, length: int = 12, seed: int = 1) -> Tensor:
    """Random token ids (batch, length) below NUM_TOKENS."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, NUM_TOKENS, (batch, length), generator=gen)


@torch.no_grad()
def max_logit_diff(ours: nn.Module, theirs: nn.Module, x: Tensor, **forward_kw: Any) -> float:
    """max |ours(x) - theirs(x)| over the logits, both called with ``forward_kw``."""
    a, b = ours(x, **forward_kw), theirs(x, **forward_kw)
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
