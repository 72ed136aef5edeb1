"""Composition: attention, feedforward and norm modules given per layer (attn_factory,
cross_attn_factory, ff_factory, norm_factory), beside the flag-built ones."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anyformer import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper
from anyformer.cache import KVCache

DIM, HEADS, VOCAB = 16, 2, 40


class PositionalSelfAttention(nn.Module):
    """Causal attention written against the protocol only: learned positions added to its
    queries and keys (so a cache must count positions on), keys/values in the given cache."""

    can_cache_kv = True

    def __init__(self, dim: int = DIM, heads: int = HEADS, max_len: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.pos = nn.Embedding(max_len, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, *, context, plan, positions, cache) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        p = self.pos(positions).expand(b, n, d)
        q, k, v = ((t + p if t is not v else t).view(b, n, self.heads, -1) for t in (q, k, v))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v)
        mask, is_causal = plan.sdpa_args(n, k.shape[-2], q.dtype, x.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        if plan.row_valid is not None:
            out = out * plan.row_valid
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class NoCacheAttention(PositionalSelfAttention):
    can_cache_kv = False


class ReluFeedForward(nn.Module):
    def __init__(self, dim: int = DIM, hidden: int = 24) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(torch.relu(self.up(x)))


def _randomise(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3)


# ----------------------------------------------------------------------- a hand-built reference


def _layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _reference(stack: nn.Module, x: Tensor, key_mask: Tensor) -> Tensor:
    """One attention layer, one feedforward, LayerNorms: softmax attention written out."""
    attn, ff = stack.layers[0].branch, stack.layers[1].branch
    b, n, d = x.shape
    h = _layer_norm(x, stack.layers[0].pre_norm)
    w_q, w_k, w_v = attn.to_qkv.weight.chunk(3, dim=0)
    p = attn.pos.weight[:n]
    q, k, v = h @ w_q.T + p, h @ w_k.T + p, h @ w_v.T
    q, k, v = (t.view(b, n, HEADS, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // HEADS)
    keep = torch.ones(n, n, dtype=torch.bool).tril() & key_mask[:, None, None, :]
    probs = scores.masked_fill(~keep, float("-inf")).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(b, n, d)
    x = x + out @ attn.to_out.weight.T + attn.to_out.bias
    h = _layer_norm(x, stack.layers[1].pre_norm)
    x = x + torch.relu(h @ ff.up.weight.T + ff.up.bias) @ ff.down.weight.T + ff.down.bias
    return _layer_norm(x, stack.final_norm)


def test_given_attention_feedforward_and_norms_equal_a_float64_hand_computation() -> None:
    stack = Decoder(
        dim=DIM,
        depth=1,
        heads=HEADS,
        attn_factory=lambda i: PositionalSelfAttention(),
        ff_factory=lambda i: ReluFeedForward(),
        norm_factory=lambda i: nn.LayerNorm(DIM),
    ).double()
    _randomise(stack, seed=0)
    stack.eval()
    x = torch.randn(2, 7, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 2:4] = False
    torch.testing.assert_close(stack(x, mask=mask), _reference(stack, x, mask), rtol=0, atol=1e-10)


def test_factories_are_called_once_per_layer_of_their_kind_with_its_index() -> None:
    calls: dict[str, list[int]] = {"attn": [], "ff": [], "norm": []}

    def factory(kind: str, make):
        return lambda i: calls[kind].append(i) or make()

    stack = Decoder(
        dim=DIM,
        depth=2,
        heads=HEADS,
        attn_factory=factory("attn", PositionalSelfAttention),
        ff_factory=lambda i: calls["ff"].append(i),  # None: the flag-built FeedForward
        norm_factory=factory("norm", lambda: nn.LayerNorm(DIM)),
    )
    assert calls == {"attn": [0, 2], "ff": [1, 3], "norm": [0, 1, 2, 3, 4]}
    assert type(stack.layers[1].branch).__name__ == "FeedForward"
    assert isinstance(stack.final_norm, nn.LayerNorm)
    assert stack.given_modules == (
        "layers.0.branch",
        "layers.0.pre_norm",
        "layers.1.pre_norm",
        "layers.2.branch",
        "layers.2.pre_norm",
        "layers.3.pre_norm",
        "final_norm",
    )


# ----------------------------------------------------------------------- cached decoding


def _lm(seed: int, **stack_kwargs) -> TransformerWrapper:
    torch.manual_seed(seed)
    stack = Decoder(dim=DIM, depth=2, heads=HEADS, **stack_kwargs)
    return TransformerWrapper(num_tokens=VOCAB, max_seq_len=32, attn_layers=stack).eval()


def test_given_attention_and_feedforward_decode_with_a_cache_as_without() -> None:
    net = _lm(
        3,
        attn_factory=lambda i: PositionalSelfAttention(),
        ff_factory={3: ReluFeedForward()},
    )
    assert [type(b.branch).__name__ for b in net.attn_layers.layers] == [
        "PositionalSelfAttention",
        "FeedForward",
        "PositionalSelfAttention",
        "ReluFeedForward",
    ]
    assert net.capabilities()["kv_cache"] is True
    x = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(4))
    full = net(x)
    cache = KVCache()
    steps = [net(x[:, :6], cache=cache)]
    steps += [net(x[:, i : i + 1], cache=cache, input_not_include_cache=True) for i in range(6, 11)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
    assert cache.length == 11
    lm = AutoregressiveWrapper(net)
    prompt = x[:, :4]
    cached = lm.generate(prompt, 8, temperature=0.0, cache_kv=True)
    uncached = lm.generate(prompt, 8, temperature=0.0, cache_kv=False)
    assert cached.shape == (2, 8)
    assert torch.equal(cached, uncached)


def test_a_stack_mixing_flag_built_and_given_copies_equals_the_flag_stack() -> None:
    kwargs = dict(dim=DIM, depth=2, heads=HEADS, rotary_pos_emb=True, ff_glu=True, use_rmsnorm=True)
    torch.manual_seed(5)
    flag = Decoder(**kwargs).eval()
    mixed = Decoder(
        **kwargs,
        attn_factory={2: copy.deepcopy(flag.layers[2].branch)},  # the built-in Attention
        ff_factory={1: copy.deepcopy(flag.layers[1].branch)},
        norm_factory={0: copy.deepcopy(flag.layers[0].pre_norm)},
    ).eval()
    assert mixed.state_dict().keys() == flag.state_dict().keys()
    mixed.load_state_dict(flag.state_dict())
    assert mixed.given_modules == ("layers.0.pre_norm", "layers.1.branch", "layers.2.branch")
    assert type(mixed.layers[2]).__name__ == "GivenAttentionBlock"
    x = torch.randn(2, 9, DIM, generator=torch.Generator().manual_seed(6))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 1] = False
    expected = flag(x, mask=mask)
    torch.testing.assert_close(mixed(x, mask=mask), expected, rtol=0, atol=1e-5)
    cache = KVCache()
    steps = [mixed(x[:, :5], mask=mask[:, :5], cache=cache)]
    steps += [mixed(x[:, i : i + 1], mask=mask[:, i : i + 1], cache=cache) for i in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, rtol=0, atol=1e-5)


def test_a_given_cross_attention_equals_the_flag_one_cached_and_uncached() -> None:
    torch.manual_seed(7)
    flag = Decoder(dim=DIM, depth=1, heads=HEADS, cross_attend=True).eval()
    assert flag.layer_types == ("a", "c", "f")
    mixed = Decoder(
        dim=DIM,
        depth=1,
        heads=HEADS,
        cross_attend=True,
        cross_attn_factory={1: copy.deepcopy(flag.layers[1].branch)},
    ).eval()
    mixed.load_state_dict(flag.state_dict())
    g = torch.Generator().manual_seed(8)
    x, context = torch.randn(2, 6, DIM, generator=g), torch.randn(2, 5, DIM, generator=g)
    context_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    kw = dict(context=context, context_mask=context_mask)
    expected = flag(x, **kw)
    torch.testing.assert_close(mixed(x, **kw), expected, rtol=0, atol=1e-5)
    cache = KVCache()
    steps = [mixed(x[:, :3], cache=cache, **kw)]
    steps += [mixed(x[:, i : i + 1], cache=cache, **kw) for i in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, rtol=0, atol=1e-5)


def test_a_given_attention_that_cannot_cache_turns_the_cache_off_honestly() -> None:
    net = _lm(9, attn_factory={0: NoCacheAttention()})
    caps = net.capabilities()
    assert caps["kv_cache"] is False and caps["fused_attention"] is False
    assert [p["path"] for p in caps["attention"]] == ["given", "fused"]
    lm = AutoregressiveWrapper(net)
    prompt = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(10))
    with pytest.warns(UserWarning, match="cannot cache keys/values; decoding without a cache"):
        fallback = lm.generate(prompt, 6, temperature=0.0, cache_kv=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(fallback, lm.generate(prompt, 6, temperature=0.0, cache_kv=False))
    with pytest.raises(
        ValueError, match=r"can_cache_kv = True.*\(NoCacheAttention, attn_factory\)"
    ):
        net(prompt, cache=KVCache())
    # return_hiddens keeps no cache to continue from (the stack could not use it)
    _, inter = net.attn_layers(torch.randn(1, 3, DIM), return_hiddens=True)
    assert inter.cache is None and len(inter.hiddens) == 2


# ----------------------------------------------------------------------- errors


def _make(**kwargs) -> nn.Module:
    return Decoder(dim=DIM, depth=2, heads=HEADS, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            dict(attn_factory=PositionalSelfAttention()),
            TypeError,
            r"attn_factory must be a mapping .* got one PositionalSelfAttention module",
        ),
        (dict(ff_factory=42), TypeError, r"ff_factory must be a mapping .*, got int"),
        (
            dict(attn_factory={1: PositionalSelfAttention()}),
            ValueError,
            r"attn_factory key 1 is a feedforward layer; the self-attention layers of this "
            r"stack \(layer_types 'afaf'\) are at \[0, 2\]",
        ),
        (
            dict(cross_attn_factory={0: PositionalSelfAttention()}),
            ValueError,
            r"cross_attn_factory key 0 is a self-attention layer; .* are at \[\]",
        ),
        (dict(ff_factory={"1": ReluFeedForward()}), TypeError, r"keys must be int .* str '1'"),
        (dict(ff_factory={True: ReluFeedForward()}), TypeError, r"keys must be int .* bool"),
        (dict(ff_factory={1: "relu"}), TypeError, r"ff_factory\[1\] must be an nn.Module, got str"),
        (
            dict(norm_factory={5: nn.LayerNorm(DIM)}),
            ValueError,
            r"key 5 is no layer;.*\[0, 1, 2, 3, 4\]",
        ),
        (
            dict(norm_factory={4: nn.LayerNorm(DIM)}, pre_norm=False),
            ValueError,
            r"norm_factory key 4 is no layer; .* are at \[0, 1, 2, 3\]",
        ),
        (
            dict(ff_factory=lambda i: 3),
            TypeError,
            r"ff_factory\(1\) must return an nn.Module or None, got int",
        ),
        (
            dict(attn_factory={2: PositionalSelfAttention()}, residual_attn=True),
            ValueError,
            r"attn_factory gives layer 2 its attention, but residual_attn=True",
        ),
    ],
)
def test_composition_keywords_are_checked(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        _make(**kwargs)


def test_what_a_given_attention_cannot_do_is_refused_by_name() -> None:
    stack = _make(attn_factory={0: PositionalSelfAttention()}).eval()
    x = torch.randn(1, 4, DIM)
    with pytest.raises(ValueError, match=r"config_dict: layers.0.branch are given modules"):
        stack.config_dict()
    with pytest.raises(
        ValueError, match=r"return_attn: .*\(PositionalSelfAttention, attn_factory\)"
    ):
        stack(x, return_attn=True)
    with pytest.raises(ValueError, match=r"mems: Transformer-XL memories cannot be written"):
        stack(x, mems=[torch.randn(1, 2, DIM), torch.randn(1, 2, DIM)])
    # the flag-built stack still describes itself
    assert Encoder(dim=DIM, depth=1, heads=HEADS).config_dict()["class"] == "Encoder"
