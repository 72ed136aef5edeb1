"""ContinuousTransformerWrapper options of x-transformers 2.x: ``average_pool_embed`` equal to
2.31.10 from the same weights, and ``use_cls_token`` / ``num_cls_tokens`` (anyformer's, as on
TransformerWrapper) equal to the same vectors given as prepended embeddings."""

from __future__ import annotations

import pytest
import torch
from xt2 import xt2
from xt2_models import TOL, explicit, perturb_

import anyformer as af
from anyformer.convert import load_x_transformers_state_dict

torch.set_num_threads(1)

MASK = torch.tensor([[True] * 12, [True] * 7 + [False] * 5])


@pytest.mark.parametrize("masked", [False, True])
def test_average_pool_embed_matches_xt2(masked: bool) -> None:
    X = xt2()
    torch.manual_seed(0)
    kw = explicit(dict(rotary_pos_emb=True))
    wrapper_kw = dict(dim_in=5, dim_out=3, max_seq_len=32, average_pool_embed=True)
    theirs = X.ContinuousTransformerWrapper(
        **wrapper_kw, attn_layers=X.Encoder(verbose=False, **kw)
    )
    perturb_(theirs)
    ours = af.ContinuousTransformerWrapper(**wrapper_kw, attn_layers=af.Encoder(**kw))
    load_x_transformers_state_dict(ours, theirs.state_dict(), version=2)
    x = torch.randn(2, 12, 5, generator=torch.Generator().manual_seed(1))
    mask = MASK if masked else None
    with torch.no_grad():
        a, b = ours.eval()(x, mask=mask), theirs.eval()(x, mask=mask)
    assert a.shape == b.shape == (2, 3)
    assert (a - b).abs().max().item() <= TOL


@pytest.mark.parametrize("k", [1, 2])
def test_cls_tokens_equal_prepended_embeddings(k: int) -> None:
    torch.manual_seed(0)
    stack = af.Encoder(dim=16, depth=2, heads=2, attn_dim_head=8, rotary_pos_emb=True)
    pooled = af.ContinuousTransformerWrapper(
        dim_in=4, max_seq_len=0, attn_layers=stack, use_cls_token=True, num_cls_tokens=k
    ).eval()
    plain = af.ContinuousTransformerWrapper(dim_in=4, max_seq_len=0, attn_layers=stack).eval()
    plain.project_in.load_state_dict(pooled.project_in.state_dict())
    x = torch.randn(2, 12, 4)
    cls = pooled.cls_token.detach().expand(2, k, 16)
    with torch.no_grad():
        got = pooled(x, mask=MASK, return_embeddings=True)
        _, inter = pooled(x, mask=MASK, return_intermediates=True)
        rows = plain(x, mask=MASK, prepend_embeds=cls, return_embeddings=True)
    want = rows[:, 0] if k == 1 else rows[:, :k]
    assert got.shape == ((2, 16) if k == 1 else (2, k, 16))
    assert (got - want).abs().max().item() <= 1e-6
    assert (inter.last_layer_hiddens - rows[:, k:]).abs().max().item() <= 1e-6


def test_pooled_continuous_refuses_a_cache() -> None:
    model = af.ContinuousTransformerWrapper(
        dim_in=4, max_seq_len=8, attn_layers=af.Decoder(dim=16, depth=1, heads=2),
        average_pool_embed=True,
    )  # fmt: skip
    assert model.capabilities()["kv_cache"] is False
    with pytest.raises(ValueError, match="use_cls_token / average_pool_embed pool the whole"):
        model(torch.randn(1, 3, 4), cache=af.KVCache())
    with pytest.raises(ValueError, match="use_cls_token=True and average_pool_embed=True"):
        af.ContinuousTransformerWrapper(
            max_seq_len=8, attn_layers=af.Encoder(dim=16, depth=1, heads=2),
            average_pool_embed=True, use_cls_token=True,
        )  # fmt: skip


def test_use_identity_if_same_dim_matches_xt2() -> None:
    X = xt2()
    torch.manual_seed(0)
    kw = explicit({})
    wrapper_kw = dict(dim_in=32, dim_out=32, max_seq_len=32, use_identity_if_same_dim=True)
    theirs = X.ContinuousTransformerWrapper(
        **wrapper_kw, attn_layers=X.Decoder(verbose=False, **kw)
    )
    perturb_(theirs)
    ours = af.ContinuousTransformerWrapper(**wrapper_kw, attn_layers=af.Decoder(**kw))
    assert isinstance(ours.project_in, torch.nn.Identity)
    assert isinstance(ours.project_out, torch.nn.Identity)
    load_x_transformers_state_dict(ours, theirs.state_dict(), version=2)
    x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours.eval()(x), theirs.eval()(x)
    assert (a - b).abs().max().item() <= TOL
    kept = af.ContinuousTransformerWrapper(
        dim_in=32, dim_out=8, max_seq_len=8, attn_layers=af.Decoder(dim=32, depth=1, heads=2),
        use_identity_if_same_dim=True,
    )  # fmt: skip
    assert isinstance(kept.project_in, torch.nn.Identity)
    assert tuple(kept.project_out.weight.shape) == (8, 32)
