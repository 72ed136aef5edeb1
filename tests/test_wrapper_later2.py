"""x-transformers 2.x wrapper API, part 3: external self-attention keys/values
(``self_attn_additional_kv`` / ``additional_kv_mask``) and XTransformer's refusal of pooling
keywords. Oracles: x-transformers 2.31.10 logits from the same weights, and a cached-prefix
identity (a causal model attending to a prefix's keys/values equals the full run)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from xt2 import xt2
from xt2_models import TOL, explicit, max_logit_diff, pair, perturb_, tokens

import anyformer as af
from anyformer.convert import load_x_transformers_state_dict

DIM_HEAD = 8
ROT = DIM_HEAD // 2  # the harness's rotary width


def _stack(rotary: bool, depth: int = 2) -> dict:
    return dict(dim=16, depth=depth, heads=2, attn_dim_head=DIM_HEAD, rotary_pos_emb=rotary)


def _external(count: int, batch: int = 2, m: int = 3, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 2, m, DIM_HEAD, generator=g),
            torch.randn(batch, 2, m, DIM_HEAD, generator=g),
        )
        for _ in range(count)
    ]


def _to_ours(kvs: list, rotary: bool) -> list:
    """2.x rotates interleaved channel pairs (2i, 2i+1), anyformer halves (i, i + r/2); the
    converter permutes the q/k projections accordingly, so external keys get the same permutation."""
    if not rotary:
        return kvs
    perm = [*range(0, ROT, 2), *range(1, ROT, 2), *range(ROT, DIM_HEAD)]
    return [(k[..., perm], v) for k, v in kvs]


CASES = [
    pytest.param("Decoder", False, dict(count=2), id="decoder-all-layers"),
    pytest.param("Decoder", True, dict(count=2), id="decoder-rotary"),
    pytest.param("Decoder", True, dict(count=1), id="decoder-top-layer-only"),
    pytest.param("Decoder", True, dict(count=2, kv_mask=True), id="decoder-kv-mask"),
    pytest.param("Encoder", True, dict(count=2, kv_mask=True, mask=True), id="encoder-both-masks"),
    pytest.param("Encoder", False, dict(count=3), id="encoder-more-than-layers"),
]


@pytest.mark.parametrize(("kind", "rotary", "case"), CASES)
def test_additional_kv_matches_xt2(kind: str, rotary: bool, case: dict) -> None:
    torch.manual_seed(0)
    ours, theirs = pair(kind, _stack(rotary))
    x = tokens()
    kvs = _external(case["count"])
    kw: dict = {}
    if case.get("kv_mask"):
        kw["additional_kv_mask"] = torch.tensor([[True, False, True], [False, True, True]])
    if case.get("mask"):
        kw["mask"] = torch.ones_like(x, dtype=torch.bool)
        kw["mask"][1, 9:] = False
    want = theirs(x, self_attn_additional_kv=kvs, **kw)
    got = ours(x, self_attn_additional_kv=_to_ours(kvs, rotary), **kw)
    rows = kw["mask"] if "mask" in kw else torch.ones_like(x, dtype=torch.bool)
    assert (got - want)[rows].abs().max().item() <= TOL
    assert (want - theirs(x, **kw)).abs().max().item() > 0.1  # the option changes the logits


def test_additional_kv_none_entries_and_unchanged_base() -> None:
    ours, theirs = pair("Decoder", _stack(True))
    x = tokens()
    assert max_logit_diff(ours, theirs, x, self_attn_additional_kv=[None, None]) <= TOL
    assert (ours(x, self_attn_additional_kv=[None, None]) - ours(x)).abs().max().item() == 0.0


@pytest.mark.parametrize("detach", [False, True])
def test_prefix_cache_identity(detach: bool) -> None:
    """A causal model fed x2 with x1's keys/values (from its intermediates) as external keys and
    positions continuing after x1 gives the last rows of the full run on x1 ++ x2."""
    torch.manual_seed(0)
    model = (
        af.TransformerWrapper(
            num_tokens=32,
            max_seq_len=32,
            use_abs_pos_emb=False,
            attn_layers=af.Decoder(
                dim=16, depth=2, heads=2, attn_dim_head=DIM_HEAD, rotary_pos_emb=True
            ),
        )
        .eval()
        .double()
    )
    x1, x2 = tokens(length=7, seed=3) % 32, tokens(length=5, seed=4) % 32
    full = model(torch.cat((x1, x2), dim=1))
    _, inter = model(x1, return_intermediates=True)
    pos = torch.arange(7, 12)
    got = model(x2, self_attn_additional_kv=inter, pos=pos, detach_additional_kv=detach)
    assert (got - full[:, 7:]).abs().max().item() <= 1e-10
    pairs = [i.cached_kv for i in inter.attn_intermediates]
    assert (model(x2, self_attn_additional_kv=pairs, pos=pos) - got).abs().max().item() == 0.0


def test_additional_kv_keeps_fused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    model = af.TransformerWrapper(
        num_tokens=32,
        max_seq_len=32,
        attn_layers=af.Decoder(dim=16, depth=2, heads=2, attn_dim_head=DIM_HEAD),
    ).eval()
    assert {p["path"] for p in model.attn_layers.attention_paths()} == {"fused"}
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model(
        tokens() % 32,
        self_attn_additional_kv=_external(2),
        additional_kv_mask=torch.ones(2, 3, dtype=torch.bool),
    )
    assert len(calls) == 2


def test_additional_kv_errors() -> None:
    model = af.TransformerWrapper(
        num_tokens=32,
        max_seq_len=32,
        attn_layers=af.Decoder(dim=16, depth=1, heads=2, attn_dim_head=DIM_HEAD),
    )
    x = tokens() % 32
    bad = [(torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4))]
    with pytest.raises(
        ValueError, match=r"self_attn_additional_kv: .*\(2, 2, 3, 8\).*got \(2, 2, 3, 4\)"
    ):
        model(x, self_attn_additional_kv=bad)
    with pytest.raises(
        ValueError, match=r"additional_kv_mask must be a bool tensor of shape.*\(2, 3\)"
    ):
        model(
            x,
            self_attn_additional_kv=_external(1),
            additional_kv_mask=torch.ones(2, 4, dtype=torch.bool),
        )
    with pytest.raises(TypeError, match="self_attn_additional_kv must be a list"):
        model(x, self_attn_additional_kv=torch.zeros(1))


def _xtransformer(**kw: object) -> af.XTransformer:
    sides = dict(num_tokens=16, max_seq_len=8, depth=1, heads=2)
    return af.XTransformer(
        dim=16,
        **{f"enc_{k}": v for k, v in sides.items()},
        **{f"dec_{k}": v for k, v in sides.items()},
        **kw,
    )


@pytest.mark.parametrize("side", ["enc_", "dec_"])
@pytest.mark.parametrize(
    ("name", "value"),
    [("use_cls_token", True), ("average_pool_embed", True), ("num_cls_tokens", 2)],
)
def test_xtransformer_refuses_pooling(side: str, name: str, value: object) -> None:
    with pytest.raises(
        TypeError, match=rf"XTransformer: keyword '{side}{name}' is not accepted: pools"
    ):
        _xtransformer(**{side + name: value})


# ContinuousTransformerWrapper(probabilistic=True) and the Gaussian NLL / sampling


def _continuous_pair(**wrapper_kw: object) -> tuple:
    X = xt2()
    torch.manual_seed(0)
    kw = explicit(dict(rotary_pos_emb=True))
    wkw = dict(dim_in=3, dim_out=3, max_seq_len=32, probabilistic=True, **wrapper_kw)
    theirs = X.ContinuousTransformerWrapper(**wkw, attn_layers=X.Decoder(verbose=False, **kw))
    perturb_(theirs)
    ours = af.ContinuousTransformerWrapper(**wkw, attn_layers=af.Decoder(**kw))
    load_x_transformers_state_dict(ours, theirs.state_dict(), version=2)
    return ours.eval(), theirs.eval(), X


def _vectors(n: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, n, 3, generator=torch.Generator().manual_seed(seed))


def test_probabilistic_output_matches_xt2() -> None:
    ours, theirs, _ = _continuous_pair()
    x = _vectors()
    with torch.no_grad():
        a, b = ours(x), theirs(x)
        h = ours(x, return_embeddings=True)
    assert a.shape == b.shape == (2, 2, 9, 3)
    assert (a - b).abs().max().item() <= TOL
    # by hand (float64): the 2 * dim_out projection holds (mean, log-variance) interleaved
    raw = h.double() @ ours.project_out.weight.double().T
    assert (a[0].double() - raw[..., 0::2]).abs().max().item() <= 1e-5
    assert (a[1].double() - raw[..., 1::2].exp()).abs().max().item() <= 1e-5


def test_probabilistic_loss_matches_xt2_and_hand() -> None:
    ours, theirs, X = _continuous_pair()
    x = _vectors(10)
    with torch.no_grad():
        got = af.ContinuousAutoregressiveWrapper(ours)(x)
        want = X.ContinuousAutoregressiveWrapper(theirs)(x)
        mean, var = (t.double() for t in ours(x[:, :-1]))
    target = x[:, 1:].double()
    hand = (0.5 * (var.clamp(min=1e-6).log() + (target - mean) ** 2 / var.clamp(min=1e-6))).mean()
    assert abs(got.item() - want.item()) <= TOL
    assert abs(got.item() - hand.item()) <= 1e-5


@pytest.mark.parametrize("cache_kv", [False, True])
def test_probabilistic_generate_matches_xt2(cache_kv: bool) -> None:
    ours, theirs, X = _continuous_pair()
    start = _vectors(4)
    torch.manual_seed(7)
    got = af.ContinuousAutoregressiveWrapper(ours).generate(
        start, 5, cache_kv=cache_kv, temperature=0.5
    )
    torch.manual_seed(7)
    want = X.ContinuousAutoregressiveWrapper(theirs).generate(
        start, 5, cache_kv=cache_kv, temperature=0.5
    )
    assert got.shape == (2, 5, 3)
    assert (got - want).abs().max().item() <= 1e-4


def test_probabilistic_temperature_zero_is_the_mean() -> None:
    ours, _, _ = _continuous_pair()
    start = _vectors(4)
    gen = af.ContinuousAutoregressiveWrapper(ours)
    got = gen.generate(start, 3, temperature=0.0)
    seq = start
    with torch.no_grad():
        for _ in range(3):  # greedy by hand: append the predicted mean
            seq = torch.cat((seq, ours(seq)[0][:, -1:]), dim=1)
    assert (got - seq[:, 4:]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="temperature must be a float >= 0, got -1"):
        gen.generate(start, 3, temperature=-1.0)


def test_probabilistic_needs_dim_out() -> None:
    with pytest.raises(
        ValueError, match=r"probabilistic=True needs dim_out .* or a project_out module"
    ):
        af.ContinuousTransformerWrapper(
            max_seq_len=8, probabilistic=True, attn_layers=af.Decoder(dim=8, depth=1, heads=1)
        )


# ContinuousTransformerWrapper(project_in=..., project_out=...) modules of your own


def test_custom_projections_match_xt2() -> None:
    """2.x's project_in / project_out keywords, probabilistic without dim_out: the output width
    comes from the project_out module (2 * 3 channels: mean and log-variance of 3)."""
    X = xt2()
    torch.manual_seed(0)
    kw = explicit(dict(rotary_pos_emb=True))
    mods = dict(project_in=nn.Linear(5, 32, bias=False), project_out=nn.Linear(32, 6, bias=False))
    wkw = dict(max_seq_len=32, probabilistic=True)
    theirs = X.ContinuousTransformerWrapper(
        **wkw, **mods, attn_layers=X.Decoder(verbose=False, **kw)
    )
    perturb_(theirs)
    mine = {k: nn.Linear(m.in_features, m.out_features, bias=False) for k, m in mods.items()}
    ours = af.ContinuousTransformerWrapper(**wkw, **mine, attn_layers=af.Decoder(**kw))
    load_x_transformers_state_dict(ours, theirs.state_dict(), version=2)
    x = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours.eval()(x), theirs.eval()(x)
    assert a.shape == b.shape == (2, 2, 7, 3)
    assert (a - b).abs().max().item() <= TOL


def test_custom_project_in_equals_built_projection() -> None:
    """A project_in module of any kind (here Linear then tanh, by hand in float64) replaces the
    built projection: the model equals one fed the projected vectors through an identity."""
    torch.manual_seed(0)
    layers = dict(dim=16, depth=1, heads=2, attn_dim_head=DIM_HEAD)
    proj = nn.Sequential(nn.Linear(5, 16), nn.Tanh()).double()
    ours = af.ContinuousTransformerWrapper(
        max_seq_len=16, dim_out=4, project_in=proj, attn_layers=af.Decoder(**layers)
    ).double()
    plain = af.ContinuousTransformerWrapper(
        max_seq_len=16, dim_out=4, attn_layers=af.Decoder(**layers)
    ).double()
    plain.load_state_dict(
        {k: v for k, v in ours.state_dict().items() if not k.startswith("project_in")}
    )
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    hand = torch.tanh(x @ proj[0].weight.T + proj[0].bias)
    assert (ours(x) - plain(hand)).abs().max().item() <= 1e-12


def test_custom_projection_errors() -> None:
    dec = dict(dim=8, depth=1, heads=1)
    with pytest.raises(ValueError, match="pass either dim_in or a project_in module, not both"):
        af.ContinuousTransformerWrapper(
            max_seq_len=8, dim_in=3, project_in=nn.Linear(3, 8), attn_layers=af.Decoder(**dec)
        )
    with pytest.raises(TypeError, match=r"project_out must be an nn\.Module"):
        af.ContinuousTransformerWrapper(
            max_seq_len=8, project_out="linear", attn_layers=af.Decoder(**dec)
        )
    model = af.ContinuousTransformerWrapper(
        max_seq_len=8, project_out=nn.Linear(8, 2), attn_layers=af.Decoder(**dec)
    )
    with pytest.raises(
        ValueError, match="project_in or project_out module of your own has no configuration"
    ):
        model.config_dict()
