"""Mixture-of-experts feedforward (ff_num_experts, ff_top_k, ff_num_shared_experts,
ff_capacity_factor, ff_router_renormalize, ff_load_balance_loss_weight, ff_router_z_loss_weight):
routed outputs against a float64 loop over the paper's formulas, aux losses and capacity dropping
by hand, cached vs uncached decoding, causality, gradients, errors, parameter counts, folders."""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer import AutoregressiveWrapper, Decoder, Encoder, FeedForward, TransformerWrapper
from anyformer.cache import KVCache
from anyformer.config import FeedForwardConfig
from anyformer.convert.x_transformers import to_x_transformers_state_dict
from anyformer.nn.moe import MixtureOfExperts
from anyformer.serialization import load_pretrained, save_pretrained
from anyformer.stack.lean import LeanLoop

torch.set_num_threads(1)


def lm(depth: int = 2, **kw) -> TransformerWrapper:
    torch.manual_seed(0)
    stack = dict(dim=16, depth=depth, heads=2, **{"ff_num_experts": 4, **kw})
    return TransformerWrapper(num_tokens=32, max_seq_len=32, attn_layers=Decoder(**stack))


def moe(dim: int = 6, **kw) -> MixtureOfExperts:
    torch.manual_seed(1)
    kw.setdefault("num_experts", 4)
    return MixtureOfExperts(dim, FeedForwardConfig(**kw)).double()


# --- the paper's computation, in float64 python over one token at a time --------------------


def _act(ff: FeedForward, h: torch.Tensor) -> torch.Tensor:
    c = ff.config
    if c.swish:
        return h * torch.sigmoid(h)
    if c.relu_squared:
        return torch.relu(h) ** 2
    if c.gelu_tanh:
        return 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    return 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))


def ref_expert(ff: FeedForward, x: torch.Tensor) -> torch.Tensor:
    """One expert on one token x (d,): W2 act(W1 x + b1) + b2, or the GLU form."""
    w1, w2 = ff.proj_in.weight.detach(), ff.proj_out.weight.detach()
    h = w1 @ x + (0 if ff.proj_in.bias is None else ff.proj_in.bias.detach())
    if ff.config.glu:
        value, gate = h.chunk(2)
        h = value * _act(ff, gate)
    else:
        h = _act(ff, h)
    return w2 @ h + (0 if ff.proj_out.bias is None else ff.proj_out.bias.detach())


def ref_gates(m: MixtureOfExperts, x: torch.Tensor, renormalize: bool) -> dict[int, float]:
    """Expert -> gate weight of one token: the top-k logits' softmax (Mixtral) or the top-k of
    the softmax over all experts (Switch)."""
    logits = [float(v) for v in m.router.weight.detach() @ x]
    order = sorted(range(len(logits)), key=lambda i: -logits[i])[: m.top_k]
    pool = order if renormalize else range(len(logits))
    total = sum(math.exp(logits[i]) for i in pool)
    return {i: math.exp(logits[i]) / total for i in order}


def ref_moe(m: MixtureOfExperts, xs: torch.Tensor, renormalize: bool) -> torch.Tensor:
    rows = []
    for x in xs:
        out = sum(g * ref_expert(m.experts[i], x) for i, g in ref_gates(m, x, renormalize).items())
        rows.append(out + sum((ref_expert(s, x) for s in m.shared_experts), torch.zeros_like(x)))
    return torch.stack(rows)


@settings(max_examples=12, deadline=None)
@given(
    experts=st.integers(2, 5),
    data=st.data(),
    shared=st.integers(0, 2),
    renormalize=st.sampled_from([None, True, False]),
    ff=st.sampled_from([{}, {"glu": True, "swish": True}, {"relu_squared": True, "no_bias": True}]),
)
def test_routed_output_equals_a_float64_loop_over_each_tokens_top_k(
    experts, data, shared, renormalize, ff
):
    top_k = data.draw(st.integers(1, experts))
    m = moe(num_experts=experts, top_k=top_k, num_shared_experts=shared,
            router_renormalize=renormalize, mult=2, **ff)  # fmt: skip
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    expected = ref_moe(m, x.reshape(-1, 6), top_k > 1 if renormalize is None else renormalize)
    torch.testing.assert_close(m(x), expected.reshape(2, 5, 6), rtol=1e-12, atol=1e-12)


def test_experts_equal_to_the_dense_feedforward_give_the_dense_models_logits():
    """Renormalised gates sum to 1: identical experts compute the dense model, whatever the router."""
    torch.manual_seed(0)
    dense = TransformerWrapper(
        num_tokens=32, max_seq_len=32, attn_layers=Decoder(dim=16, depth=2, heads=2, ff_glu=True)
    ).eval()
    model = lm(ff_glu=True, ff_top_k=3).eval()
    state = dense.state_dict()
    for key, value in dense.state_dict().items():
        if ".proj_" in key:  # layers.{i}.branch.proj_in.weight -> each expert's copy
            head, tail = key.split(".branch.")
            for e in range(4):
                state[f"{head}.branch.experts.{e}.{tail}"] = value
            del state[key]
    state.update({k: v for k, v in model.state_dict().items() if "router" in k})
    model.load_state_dict(state)
    x = torch.randint(0, 32, (2, 9))
    torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)


# --- aux losses by hand ---------------------------------------------------------------------

ROUTER = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]  # E = 3 experts, dim = 2
TOKENS = [[2.0, 0.0], [0.0, 1.0], [1.0, 1.5], [0.2, 0.1]]


def tiny(**kw) -> MixtureOfExperts:
    m = moe(dim=2, num_experts=3, mult=1, **kw)
    with torch.no_grad():
        m.router.weight.copy_(torch.tensor(ROUTER, dtype=torch.float64))
    return m


def hand_logits() -> list[list[float]]:
    return [[sum(w * x for w, x in zip(row, t)) for row in ROUTER] for t in TOKENS]


@pytest.mark.parametrize("top_k", [1, 2])
def test_load_balancing_loss_is_switchs_formula_by_hand(top_k):
    """N * sum_i f_i * P_i, f_i: share of the T * k routed pairs choosing expert i."""
    m = tiny(top_k=top_k)
    logits = hand_logits()  # token 0: [2, 0, 1]; 1: [0, 1, .5]; 2: [1, 1.5, 1.25]; 3: [.2, .1, .15]
    chosen = [[0, 2], [1, 2], [1, 2], [0, 2]]  # best first, by hand from the rows above
    counts = [0, 0, 0]
    for row in chosen:
        for e in row[:top_k]:
            counts[e] += 1
    f = [c / (len(TOKENS) * top_k) for c in counts]
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits]
    p = [sum(row[i] for row in probs) / len(TOKENS) for i in range(3)]
    expected = 3 * sum(fi * pi for fi, pi in zip(f, p))
    losses = []
    m(torch.tensor(TOKENS, dtype=torch.float64), losses=losses)
    assert len(losses) == 1
    assert losses[0].load_balance.item() == pytest.approx(expected, rel=1e-12)


def test_a_uniform_router_has_a_load_balancing_loss_of_one():
    m = tiny(top_k=2)
    with torch.no_grad():
        m.router.weight.zero_()
    losses = []
    m(torch.tensor(TOKENS, dtype=torch.float64), losses=losses)
    assert losses[0].load_balance.item() == pytest.approx(1.0, rel=1e-12)


def test_router_z_loss_is_st_moes_formula_by_hand():
    m = tiny(top_k=2, load_balance_loss_weight=0.5, router_z_loss_weight=0.25)
    z = [math.log(sum(math.exp(v) for v in row)) ** 2 for row in hand_logits()]
    expected = sum(z) / len(z)
    losses = []
    m(torch.tensor(TOKENS, dtype=torch.float64), losses=losses)
    assert losses[0].z.item() == pytest.approx(expected, rel=1e-12)
    weighted = 0.5 * losses[0].load_balance.item() + 0.25 * expected
    assert losses[0].weighted.item() == pytest.approx(weighted, rel=1e-12)


def _layer_losses(model: TransformerWrapper, x: torch.Tensor) -> list:
    """Each mixture layer's losses, from its own input (captured by a hook)."""
    found = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: found.append(mod.router_losses(
            mod.router(args[0].reshape(-1, args[0].shape[-1])), mod.route(
                mod.router(args[0].reshape(-1, args[0].shape[-1])))[1])))
        for m in model.modules() if isinstance(m, MixtureOfExperts)
    ]  # fmt: skip
    model(x)
    for h in hooks:
        h.remove()
    return found


def test_intermediates_carry_the_mean_over_layers_and_the_wrapper_adds_it_while_training():
    model = lm(depth=3, ff_load_balance_loss_weight=0.1, ff_router_z_loss_weight=0.01)
    x = torch.randint(0, 32, (2, 10))
    layers = _layer_losses(model, x[:, :-1])
    assert len(layers) == 3
    lb = sum(r.load_balance.item() for r in layers) / 3
    z = sum(r.z.item() for r in layers) / 3
    logits, inter = model(x[:, :-1], return_intermediates=True)
    assert inter.load_balance_loss.item() == pytest.approx(lb, rel=1e-6)
    assert inter.router_z_loss.item() == pytest.approx(z, rel=1e-6)
    assert inter.aux_loss.item() == pytest.approx(0.1 * lb + 0.01 * z, rel=1e-6)
    wrapper = AutoregressiveWrapper(model)
    ce = F.cross_entropy(logits.detach().reshape(-1, 32), x[:, 1:].reshape(-1))
    assert wrapper.train()(x).item() == pytest.approx(float(ce) + 0.1 * lb + 0.01 * z, rel=1e-6)
    assert wrapper.eval()(x).item() == pytest.approx(float(ce), rel=1e-6)  # eval: plain CE


def test_zero_weights_leave_the_training_loss_the_cross_entropy():
    model = lm(ff_load_balance_loss_weight=0.0, ff_router_z_loss_weight=0.0)
    wrapper = AutoregressiveWrapper(model)
    assert wrapper.adds_router_aux_loss is False
    x = torch.randint(0, 32, (2, 10))
    logits = model(x[:, :-1])
    ce = F.cross_entropy(logits.detach().reshape(-1, 32), x[:, 1:].reshape(-1))
    assert wrapper(x).item() == pytest.approx(float(ce), rel=1e-6)


def test_a_dense_model_reports_no_router_losses():
    torch.manual_seed(0)
    dense = TransformerWrapper(
        num_tokens=32, max_seq_len=32, attn_layers=Decoder(dim=16, depth=1, heads=2)
    )
    _, inter = dense(torch.randint(0, 32, (1, 4)), return_intermediates=True)
    assert (inter.aux_loss, inter.load_balance_loss, inter.router_z_loss) == (None, None, None)
    assert AutoregressiveWrapper(dense).adds_router_aux_loss is False
    assert "mixture_of_experts" not in dense.capabilities()


# --- capacity -------------------------------------------------------------------------------


def test_capacity_drops_the_pairs_past_an_experts_capacity_first_choices_first():
    """E = 2, k = 2, T = 4, factor 0.5: capacity ceil(0.5 * 4 * 2 / 2) = 2 pairs per expert.
    First choices: t0, t2, t3 -> e0; t1 -> e1. Expert 0 queues the first choices t0, t2 (t3:
    dropped), then t1's second choice: dropped. Expert 1 queues t1 (first), then the second
    choices t0 (kept), t2, t3 (dropped). So t0 keeps both, t1 only e1, t2 only e0, t3 none."""
    m = moe(dim=2, num_experts=2, top_k=2, capacity_factor=0.5, mult=1)
    with torch.no_grad():
        m.router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    x = torch.tensor([[2.0, 1.0], [0.5, 1.5], [1.0, 0.2], [3.0, 0.0]], dtype=torch.float64)
    assert m.capacity(4) == 2
    kept = {0: (0, 1), 1: (1,), 2: (0,), 3: ()}  # token -> experts it keeps
    rows = []
    for t, experts in kept.items():
        gates = ref_gates(m, x[t], renormalize=True)
        row = torch.zeros(2, dtype=torch.float64)
        rows.append(sum((gates[e] * ref_expert(m.experts[e], x[t]) for e in experts), row))
    torch.testing.assert_close(m.train()(x), torch.stack(rows), rtol=1e-12, atol=1e-12)
    # evaluation never drops
    torch.testing.assert_close(m.eval()(x), ref_moe(m, x, True), rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), tokens=st.integers(1, 9), experts=st.integers(2, 4),
       factor=st.sampled_from([0.25, 0.5, 1.0, 1.5]))  # fmt: skip
def test_capacity_queues_match_a_python_simulation(data, tokens, experts, factor):
    """Every expert's queue: all first choices in token order, then all second choices, ...;
    a pair is kept when fewer than ceil(factor * T * k / E) pairs are ahead of it."""
    k = data.draw(st.integers(1, experts))
    chosen = [data.draw(st.permutations(range(experts)))[:k] for _ in range(tokens)]
    m = moe(num_experts=experts, top_k=k, capacity_factor=factor)
    capacity = math.ceil(factor * tokens * k / experts)
    taken = [0] * experts
    keep = [[False] * k for _ in range(tokens)]
    for rank in range(k):
        for t in range(tokens):
            e = chosen[t][rank]
            keep[t][rank] = taken[e] < capacity
            taken[e] += 1
    assert m.within_capacity(torch.tensor(chosen)).tolist() == keep


def test_capacity_keeps_tokens_in_order_and_drops_the_later_ones():
    """E = 2, k = 1, T = 6, factor 1: capacity 3. Five tokens choose expert 0: the first three
    are kept, tokens 3 and 4 get zeros (only the residual would carry them)."""
    m = moe(dim=2, num_experts=2, top_k=1, capacity_factor=1.0, mult=1)
    with torch.no_grad():
        m.router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    x = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]], dtype=torch.float64) * torch.arange(
        1, 7, dtype=torch.float64
    ).unsqueeze(-1)
    out = m.train()(x)
    expected = ref_moe(m, x, renormalize=False)  # top_k = 1: Switch's gate
    expected[3:5] = 0
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


# --- decoding, causality, gradients ---------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"ff_num_shared_experts": 1, "ff_capacity_factor": 1.0}])
def test_cached_decoding_equals_the_uncached_forward(kw):
    model = lm(ff_glu=True, **kw).eval()
    x = torch.randint(0, 32, (2, 12))
    full = model(x)
    cache = KVCache()
    model(x[:, :7], cache=cache)
    for i in range(7, 12):
        step = model(x[:, i : i + 1], cache=cache, input_not_include_cache=True)
        torch.testing.assert_close(step[:, -1], full[:, i], rtol=1e-5, atol=1e-5)
    greedy = dict(seq_len=6, filter_logits_fn="top_k", filter_kwargs={"k": 1})
    wrapper = AutoregressiveWrapper(model)
    torch.testing.assert_close(
        wrapper.generate(x[:, :3], cache_kv=True, **greedy),
        wrapper.generate(x[:, :3], cache_kv=False, **greedy),
    )
    assert LeanLoop.build(model.attn_layers) is None  # the lean loop declines a mixture


@pytest.mark.parametrize("train", [False, True])
def test_a_later_token_changes_no_earlier_output(train):
    model = lm(ff_dropout=0.0).train(train)
    x = torch.randint(0, 32, (2, 10))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 32
    torch.testing.assert_close(model(x)[:, :6], model(y)[:, :6], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(model(x)[:, 6:], model(y)[:, 6:])


def test_gradient_reaches_the_router_and_every_expert():
    model = lm(ff_top_k=2, ff_num_shared_experts=1)
    AutoregressiveWrapper(model)(torch.randint(0, 32, (4, 17))).backward()
    layer = model.attn_layers.layers[1].branch
    assert layer.router.weight.grad.abs().sum() > 0
    for expert in [*layer.experts, *layer.shared_experts]:
        assert expert.proj_in.weight.grad is not None
    used = [e for e in layer.experts if e.proj_in.weight.grad.abs().sum() > 0]
    assert len(used) >= 2


@pytest.mark.parametrize(("renormalize", "learns"), [(None, True), (False, True), (True, False)])
def test_with_one_expert_per_token_only_the_switch_gate_teaches_the_router(renormalize, learns):
    """top_k = 1: the softmax over one logit is 1 (no gradient); Switch's gate p_i has one."""
    model = lm(ff_top_k=1, ff_router_renormalize=renormalize,
               ff_load_balance_loss_weight=0.0, ff_router_z_loss_weight=0.0)  # fmt: skip
    AutoregressiveWrapper(model)(torch.randint(0, 32, (2, 9))).backward()
    grad = model.attn_layers.layers[1].branch.router.weight.grad
    assert (grad is not None and bool(grad.abs().sum() > 0)) is learns


def test_bfloat16_autocast_routes_in_float32():
    model = lm(ff_glu=True)
    x = torch.randint(0, 32, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = AutoregressiveWrapper(model)(x)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.attn_layers.layers[1].branch.router.weight.grad.dtype == torch.float32


# --- structure, parameters, errors, folders -------------------------------------------------


def test_parameter_count_is_router_plus_experts_plus_shared():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    d, h, depth = 16, 64, 2
    torch.manual_seed(0)
    dense = TransformerWrapper(
        num_tokens=32, max_seq_len=32, attn_layers=Decoder(dim=16, depth=2, heads=2, ff_glu=True)
    )
    ff = d * 2 * h + 2 * h + h * d + d  # GLU: proj_in (2h, d) + bias, proj_out (d, h) + bias
    model = lm(ff_glu=True, ff_num_experts=5, ff_num_shared_experts=2)
    assert count(model) - count(dense) == depth * (d * 5 + (5 + 2 - 1) * ff)


def test_capabilities_describe_the_mixture():
    caps = lm(ff_num_shared_experts=1, ff_capacity_factor=1.25).capabilities()
    assert caps["mixture_of_experts"] == {
        "layers": 2, "num_experts": 4, "num_shared_experts": 1, "top_k": 2, "renormalize": True,
        "capacity_drops_tokens": "training", "aux_loss": True, "lean_decoding": False,
    }  # fmt: skip
    assert caps["kv_cache"] is True


def test_macaron_collects_both_half_step_mixtures():
    model = lm(depth=1, macaron=True)
    _, inter = model(torch.randint(0, 32, (1, 6)), return_intermediates=True)
    assert sum(isinstance(m, MixtureOfExperts) for m in model.modules()) == 2
    assert inter.aux_loss is not None and inter.aux_loss.requires_grad


def test_an_encoder_mixture_runs_every_token():
    torch.manual_seed(0)
    enc = Encoder(dim=16, depth=1, heads=2, ff_num_experts=3, ff_top_k=1)
    x = torch.randn(2, 5, 16)
    out, inter = enc(x, return_hiddens=True)
    assert out.shape == (2, 5, 16) and inter.load_balance_loss is not None


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"ff_num_experts": 4, "ff_top_k": 5}, ValueError, "ff_top_k=5 routes each token"),
        ({"ff_num_experts": 0}, ValueError, "ff_num_experts must be >= 1, got 0"),
        ({"ff_num_experts": 4, "ff_top_k": 0}, ValueError, "ff_top_k must be >= 1, got 0"),
        ({"ff_num_experts": 4, "ff_num_shared_experts": -1}, ValueError, "must be >= 0, got -1"),
        ({"ff_num_experts": 4, "ff_capacity_factor": 0.0}, ValueError, "ff_capacity_factor must"),
        ({"ff_num_experts": 4, "ff_router_z_loss_weight": -1.0}, ValueError, "must be >= 0"),
        ({"ff_top_k": 1}, ValueError, "ff_top_k=1 is a mixture-of-experts option, which needs"),
        ({"ff_num_shared_experts": 2}, ValueError, "needs ff_num_experts > 1"),
        ({"ff_capacity_factor": 1.0}, ValueError, "needs ff_num_experts > 1"),
        ({"ff_num_experts": 2.0}, TypeError, "ff_num_experts must be int, got 2.0"),
        ({"ff_num_experts": 4, "ff_router_renormalize": 1}, TypeError, "ff_router_renormalize"),
        ({"ff_num_expert": 4}, TypeError, "Did you mean 'ff_num_experts'"),
    ],
)
def test_bad_values_name_the_keyword(kw, error, message):
    with pytest.raises(error, match=message):
        Decoder(dim=16, depth=1, **kw)


def test_a_lone_feedforward_refuses_experts():
    with pytest.raises(ValueError, match="MixtureOfExperts"):
        FeedForward(16, num_experts=4)


def test_a_mixture_model_saves_and_loads(tmp_path):
    model = lm(ff_glu=True, ff_num_shared_experts=1, ff_capacity_factor=2.0).eval()
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m").eval()
    assert loaded.attn_layers.config.feedforward == model.attn_layers.config.feedforward
    x = torch.randint(0, 32, (2, 7))
    assert torch.equal(loaded(x), model(x))


def test_x_transformers_export_refuses_a_mixture():
    with pytest.raises(ValueError, match="ff_num_experts"):
        to_x_transformers_state_dict(lm())


def test_the_command_line_trainers_model_trains_with_the_aux_loss():
    from anyformer.cli.model import build_model
    from anyformer.cli.overrides import build_train_config, resolve_layers

    overrides = ["seq_len=16", "dim=16", "depth=1", "heads=2", "ff_num_experts=3", "ff_top_k=1",
                 "ff_capacity_factor=1.5", "ff_router_z_loss_weight=0.5"]  # fmt: skip
    layer = resolve_layers(None, None, overrides, {})
    torch.manual_seed(0)
    wrapper = build_model(build_train_config(layer), layer["model"])
    net = wrapper.net
    assert net.attn_layers.config.feedforward.capacity_factor == 1.5
    x = torch.randint(0, 256, (2, 17))
    logits, inter = net(x[:, :-1], return_intermediates=True)  # training mode, as the trainer
    ce = F.cross_entropy(logits.detach().reshape(-1, 256), x[:, 1:].reshape(-1))
    aux = 0.01 * inter.load_balance_loss.item() + 0.5 * inter.router_z_loss.item()
    assert wrapper.train()(x).item() == pytest.approx(ce.item() + aux, rel=1e-6)


# --- torch.compile: the static-shape dispatch ----------------------------------------------


def static_moe(m: MixtureOfExperts, tokens: torch.Tensor) -> torch.Tensor:
    """The mixture's output through dispatch_static (the path torch.compile traces)."""
    gates, chosen = m.route(m.router(tokens))
    out = m.dispatch_static(tokens, gates, chosen)
    return out + sum((s(tokens) for s in m.shared_experts), torch.zeros_like(out))


@settings(max_examples=12, deadline=None)
@given(
    experts=st.integers(2, 5),
    data=st.data(),
    tokens=st.sampled_from([1, 2, 7]),
    ff=st.sampled_from([{}, {"glu": True, "swish": True, "glu_mult_bias": True},
                        {"relu_squared": True, "no_bias": True}, {"post_act_ln": True}]),
)  # fmt: skip
def test_the_static_dispatch_equals_the_eager_one(experts, data, tokens, ff):
    """The masked dense dispatch against the eager one; without a post-activation norm or a
    GLU multiplier also against the float64 loop."""
    top_k = data.draw(st.integers(1, experts))
    m = moe(num_experts=experts, top_k=top_k, num_shared_experts=data.draw(st.integers(0, 1)),
            mult=2, **ff)  # fmt: skip
    if ff.get("glu_mult_bias"):
        for e in m.experts:
            torch.nn.init.normal_(e.act.mult_bias)
    x = torch.randn(tokens, 6, dtype=torch.float64)
    torch.testing.assert_close(static_moe(m, x), m(x), rtol=1e-12, atol=1e-12)
    if not ff.get("post_act_ln") and not ff.get("glu_mult_bias"):
        expected = ref_moe(m, x, top_k > 1)
        torch.testing.assert_close(static_moe(m, x), expected, rtol=1e-12, atol=1e-12)


def test_static_dispatch_drops_the_pairs_past_capacity_like_the_eager_one():
    m = moe(num_experts=3, top_k=2, capacity_factor=0.5).train()
    x = torch.randn(10, 6, dtype=torch.float64)
    gates, chosen = m.route(m.router(x))
    keep = m.within_capacity(chosen)
    assert not keep.all()
    static = m.dispatch_static(x, gates, chosen, keep)
    torch.testing.assert_close(static, m(x), rtol=1e-12, atol=1e-12)


def _explain(fn, *args):
    torch._dynamo.reset()
    e = torch._dynamo.explain(fn)(*args)
    return e.graph_count, e.graph_break_count


@pytest.mark.parametrize("tokens", [1, 16])  # a decoding step's shape, a prompt's
def test_a_mixture_model_compiles_into_one_graph(tokens):
    model = lm(ff_num_shared_experts=1, ff_glu=True).eval()
    x = torch.randint(0, 32, (2, tokens))
    with torch.no_grad():
        expected = model(x)
    assert _explain(model, x) == (1, 0)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)


def test_the_training_loss_with_capacity_and_aux_losses_compiles_into_one_graph():
    model = lm(ff_capacity_factor=1.0, ff_top_k=1).train()
    wrapper = AutoregressiveWrapper(model)
    x = torch.randint(0, 32, (2, 17))
    assert _explain(wrapper, x) == (1, 0)
    expected = wrapper(x)
    torch.testing.assert_close(
        torch.compile(wrapper, fullgraph=True, backend="aot_eager")(x), expected
    )


def test_compiled_decoding_declines_a_mixture_and_decodes_eagerly():
    """generate(compile=True) declines a mixture (under compilation every expert runs on every
    token: slower than eager decoding), naming the option, and gives the eager tokens."""
    model = lm(ff_num_shared_experts=1).eval()
    wrapper = AutoregressiveWrapper(model)
    x = torch.randint(0, 32, (2, 4))
    greedy = dict(seq_len=12, filter_logits_fn="top_k", filter_kwargs={"k": 1})
    with pytest.warns(UserWarning, match="ff_num_experts"):
        out = wrapper.generate(x, compile=True, **greedy)
    assert torch.equal(out, wrapper.generate(x, **greedy))
