"""TransformerWrapper options and forward arguments of x-transformers 2.x (use_cls_token,
num_cls_tokens, average_pool_embed, token_emb / to_logits modules, embed_num_tokens,
input_not_include_cache with cache=, list prompts, muon_parameters): logits equal to 2.31.10's
from the same weights (tests/xt2_models.py), cached == uncached, errors naming the keyword."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from xt2 import xt2
from xt2_models import NUM_TOKENS, TOL, explicit, max_logit_diff, pair, perturb_, tokens

import anyformer as af
from anyformer.convert import load_x_transformers_state_dict
from anyformer.optim import muon_parameter_groups, muon_parameters

torch.set_num_threads(1)

MASK = torch.tensor([[True] * 12, [True] * 7 + [False] * 5])

POOLED = {
    "cls": ("Encoder", dict(use_cls_token=True), {}),
    "cls_masked": ("Encoder", dict(use_cls_token=True), dict(mask=MASK)),
    "three_cls": ("Encoder", dict(use_cls_token=True, num_cls_tokens=3), dict(mask=MASK)),
    "cls_memory": ("Encoder", dict(use_cls_token=True, num_memory_tokens=2), dict(mask=MASK)),
    "cls_decoder": ("Decoder", dict(use_cls_token=True), {}),
    "average": ("Encoder", dict(average_pool_embed=True), {}),
    "average_masked": ("Encoder", dict(average_pool_embed=True), dict(mask=MASK)),
    "average_memory": ("Encoder", dict(average_pool_embed=True, num_memory_tokens=2), {}),
}


@pytest.mark.parametrize("name", sorted(POOLED))
def test_pooled_logits_match_xt2(name: str) -> None:
    kind, wrapper_kw, forward_kw = POOLED[name]
    ours, theirs = pair(kind, dict(rotary_pos_emb=True), wrapper_kw)
    assert max_logit_diff(ours, theirs, tokens(), **forward_kw) <= TOL


@pytest.mark.parametrize("k", [1, 3])
def test_pooled_shapes_and_intermediates(k: int) -> None:
    ours, theirs = pair("Encoder", {}, dict(use_cls_token=True, num_cls_tokens=k))
    x = tokens()
    with torch.no_grad():
        logits, inter = ours(x, return_intermediates=True)
        emb = ours(x, return_embeddings=True)
        _, their_inter = theirs(x, return_intermediates=True)
    lead = (2,) if k == 1 else (2, k)
    assert logits.shape == (*lead, NUM_TOKENS)
    assert emb.shape == (*lead, 32)
    assert inter.last_layer_hiddens.shape == (2, 12, 32)
    diff = (inter.last_layer_hiddens - their_inter.last_layer_hiddens).abs().max().item()
    assert diff <= TOL


def test_average_pool_is_the_masked_mean_of_the_embeddings() -> None:
    torch.manual_seed(0)
    stack = af.Encoder(dim=16, depth=1, heads=2, attn_dim_head=8)
    plain = af.TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=stack).eval()
    pooled = af.TransformerWrapper(
        num_tokens=20, max_seq_len=16, attn_layers=copy.deepcopy(stack), average_pool_embed=True
    ).eval()
    pooled.load_state_dict(plain.state_dict())
    x = torch.randint(0, 20, (2, 12))
    with torch.no_grad():
        h = plain(x, mask=MASK, return_embeddings=True).double()
        got = pooled(x, mask=MASK, return_embeddings=True).double()
    w = MASK.double().unsqueeze(-1)
    want = (h * w).sum(1) / w.sum(1)
    assert (got - want).abs().max().item() <= 1e-5


def test_cls_token_positions_are_shifted_with_pos() -> None:
    ours, _ = pair("Encoder", dict(rotary_pos_emb=True), dict(use_cls_token=True))
    x = tokens()
    with torch.no_grad():
        a = ours(x)
        b = ours(x, pos=torch.arange(12))
    assert (a - b).abs().max().item() <= 1e-6


def test_pooling_errors_name_the_keyword() -> None:
    stack = af.Encoder(dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="use_cls_token=True and average_pool_embed=True"):
        af.TransformerWrapper(
            num_tokens=20,
            max_seq_len=8,
            attn_layers=stack,
            use_cls_token=True,
            average_pool_embed=True,
        )
    with pytest.raises(ValueError, match="num_cls_tokens must be an int >= 1, got 0"):
        af.TransformerWrapper(
            num_tokens=20, max_seq_len=8, attn_layers=stack, use_cls_token=True, num_cls_tokens=0
        )
    model = af.TransformerWrapper(
        num_tokens=20,
        max_seq_len=8,
        attn_layers=af.Decoder(dim=16, depth=1, heads=2),
        average_pool_embed=True,
    )
    assert model.capabilities()["kv_cache"] is False
    with pytest.raises(ValueError, match="average_pool_embed pool the whole sequence"):
        model(torch.randint(0, 20, (1, 4)), cache=af.KVCache())


def test_own_token_emb_and_to_logits_match_xt2() -> None:
    X = xt2()
    torch.manual_seed(0)
    emb, head = nn.Embedding(NUM_TOKENS, 32), nn.Linear(32, 10)
    kw = explicit(dict(rotary_pos_emb=True))
    theirs = X.TransformerWrapper(
        num_tokens=NUM_TOKENS,
        max_seq_len=32,
        token_emb=emb,
        to_logits=head,
        attn_layers=X.Decoder(verbose=False, **kw),
    )
    perturb_(theirs)
    ours = af.TransformerWrapper(
        num_tokens=NUM_TOKENS,
        max_seq_len=32,
        token_emb=copy.deepcopy(emb),
        to_logits=copy.deepcopy(head),
        attn_layers=af.Decoder(**kw),
    )
    load_x_transformers_state_dict(ours, theirs.state_dict(), version=2)
    assert max_logit_diff(ours.eval(), theirs.eval(), tokens()) <= TOL
    with pytest.raises(ValueError, match="token_emb or to_logits module of your own"):
        ours.config_dict()


def test_own_modules_errors_name_the_keyword() -> None:
    def build(**kw: object) -> af.TransformerWrapper:
        return af.TransformerWrapper(
            num_tokens=20, max_seq_len=8, attn_layers=af.Decoder(dim=16, depth=1, heads=2), **kw
        )

    with pytest.raises(TypeError, match="to_logits must be an nn\\.Module"):
        build(to_logits=lambda t: t)
    with pytest.raises(ValueError, match="to_logits module of your own cannot be combined"):
        build(to_logits=nn.Linear(16, 20), tie_embedding=True)
    with pytest.raises(ValueError, match="token_emb module of your own cannot be combined"):
        build(token_emb=nn.Embedding(20, 16), l2norm_embed=True)


def test_embed_num_tokens_match_xt2() -> None:
    ours, theirs = pair("Encoder", {}, dict(embed_num_tokens=dict(type=3, segment=5)))
    gen = torch.Generator().manual_seed(2)
    ids = dict(
        type=torch.randint(0, 3, (2, 12), generator=gen),
        segment=torch.randint(0, 5, (2, 12), generator=gen),
    )
    assert max_logit_diff(ours, theirs, tokens(), embed_ids=ids) <= TOL


def test_input_not_include_cache_keyword_decodes_as_uncached_and_as_xt2() -> None:
    ours, theirs = pair("Decoder", dict(rotary_pos_emb=True), dict(input_not_include_cache=True))
    x = tokens()
    with torch.no_grad():
        full = ours(x)
        their_full = theirs(x)
        out, inter = ours(x[:, :5], return_intermediates=True)  # 2.x: intermediates as cache
        pieces = [out]
        for a, b in ((5, 8), (8, 9), (9, 12)):  # only the new tokens
            out, inter = ours(x[:, a:b], cache=inter, return_intermediates=True)
            pieces.append(out)
        _, their_inter = theirs(x[:, :5], return_intermediates=True)
        theirs_step = theirs(x[:, 5:6], cache=their_inter)
    assert inter.cache_length == 12
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() <= 1e-5
    assert (pieces[1][:, :1] - theirs_step).abs().max().item() <= TOL
    assert (full - their_full).abs().max().item() <= TOL


def test_list_prompts_generate_as_xt2() -> None:
    X = xt2()
    ours, theirs = pair("Decoder", dict(rotary_pos_emb=True))
    prompts = [torch.tensor([3, 5, 7, 9, 11]), torch.tensor([4, 2])]
    ours_gen = af.AutoregressiveWrapper(ours).generate(prompts, 6, temperature=0.0)
    theirs_gen = X.AutoregressiveWrapper(theirs).generate(prompts, 6, temperature=0.0)
    assert torch.equal(ours_gen, theirs_gen)


def test_muon_parameters_hand_listed() -> None:
    model = af.TransformerWrapper(
        num_tokens=20,
        max_seq_len=8,
        attn_layers=af.Decoder(
            dim=16, depth=1, heads=2, attn_gate_values=True, ff_glu=True, attn_kv_heads=1
        ),
    )
    names = {id(p): n for n, p in model.named_parameters()}
    got = [names[id(p)] for p in model.muon_parameters()]
    base = "attn_layers.layers"
    assert got == [
        f"{base}.0.branch.qkv.to_qkv.weight",
        f"{base}.0.branch.to_v_gate.weight",
        f"{base}.0.branch.to_out.weight",
        f"{base}.1.branch.proj_in.weight",
        f"{base}.1.branch.proj_out.weight",
    ]
    muon, others = muon_parameter_groups(model)
    assert [id(p) for p in muon] == [id(p) for p in muon_parameters(model)]
    assert sorted(names[id(p)] for p in muon + others) == sorted(names.values())
    assert all(p.ndim == 2 for p in muon)
    assert "token_emb.emb.weight" in {names[id(p)] for p in others}
    assert "to_logits.weight" in {names[id(p)] for p in others}


@pytest.mark.parametrize("stack", [dict(rotary_pos_emb=True), dict(alibi_pos_bias=True)])
def test_causal_per_call_matches_xt2_and_a_decoder(stack: dict) -> None:
    ours, theirs = pair("Encoder", stack)
    x = tokens()
    with torch.no_grad():
        got = ours(x, causal=True, mask=MASK)
        want = theirs(x, causal=True, mask=MASK)
        decoder = af.TransformerWrapper(
            num_tokens=NUM_TOKENS, max_seq_len=32, attn_layers=af.Decoder(**explicit(stack))
        ).eval()
        decoder.load_state_dict(ours.state_dict())
        as_decoder = decoder(x, mask=MASK)
    keep = MASK.unsqueeze(-1)  # padded query rows are left unspecified
    assert ((got - want) * keep).abs().max().item() <= TOL
    assert ((got - as_decoder) * keep).abs().max().item() <= 1e-5
    assert (ours(x, causal=False) - ours(x)).abs().max().item() == 0.0


def test_causal_per_call_errors() -> None:
    decoder = af.Decoder(dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="causal=False cannot make this causal stack"):
        decoder(torch.randn(1, 4, 16), causal=False)
    encoder = af.Encoder(dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="cannot be combined with cache= or mems="):
        encoder(torch.randn(1, 4, 16), causal=True, mems=[torch.randn(1, 2, 16)])
