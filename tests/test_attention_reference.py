"""Every attention option against a float64 reference written here from the papers' formulas.

The reference reads the module's weights and recomputes the layer head by head with plain loops
(no anyformer code): projections, grouped key/value heads, qk-norm, memory and zero keys, masks,
talking heads, sparse top-k, the head-output modules and the output projection. Each option is
also checked for the property that defines it (k weights per row, a window, a zero key, cos
logits, ...).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anyformer import Attention

DIM, CTX = 12, 10


def _w(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    state = module.state_dict()
    return state[name].double() if name in state else None


def reference(
    m: Attention,
    x: torch.Tensor,
    context: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (b, n, dim), attention weights (b, h, n, keys)) in float64."""
    c = m.config
    h, kvh, d, dv = m.heads, m.kv_heads, c.dim_head, c.value_dim_head or c.dim_head
    group = h // kvh
    x = x.double()
    src = x if context is None else context.double()
    b, n, _ = x.shape
    j = src.shape[1]
    if "qkv.to_qkv.weight" in m.state_dict():
        w = _w(m, "qkv.to_qkv.weight")
        wq, rest = w[: h * d], w[h * d :]
    else:
        wq, rest = _w(m, "qkv.to_q.weight"), _w(m, "qkv.to_kv.weight")
    wk = rest[: kvh * d]
    wv = wk if c.shared_kv else rest[kvh * d :]
    q = (x @ wq.T).view(b, n, h, d)
    k = (src @ wk.T).view(b, j, kvh, d)
    v = (src @ wv.T).view(b, j, kvh, dv)
    scale = d**-0.5

    def normalise(t: torch.Tensor, groups: int) -> torch.Tensor:
        parts = t.reshape(*t.shape[:-1], groups, -1)
        return (parts / parts.norm(dim=-1, keepdim=True)).reshape(t.shape)

    mem_k = _w(m, "prepended.mem_k")  # (kvh, m, d)
    mem_v = _w(m, "prepended.mem_v")
    if c.qk_norm:
        q, k = normalise(q, c.qk_norm_groups), normalise(k, c.qk_norm_groups)
        if mem_k is not None:
            mem_k = normalise(mem_k, 1)  # memory keys: whole vectors (as x-transformers)
        scale = c.qk_norm_scale
    q_scale = _w(m, "qk_norm.qk_norm_q_scale")
    k_scale = _w(m, "qk_norm.qk_norm_k_scale")

    logits = torch.empty(b, h, n, 0, dtype=torch.float64)
    values = []
    allowed_cols = []
    for head in range(h):
        g = head // group  # query head -> its key/value head
        qh = q[:, :, head]
        keys = [k[:, :, g]]
        vals = [v[:, :, g]]
        fixed = []
        if mem_k is not None:
            keys.insert(0, mem_k[g].expand(b, -1, -1))
            vals.insert(0, mem_v[g].expand(b, -1, -1))
            fixed.append(mem_k.shape[1])
        if c.add_zero_kv:
            keys.insert(0, torch.zeros(b, 1, d, dtype=torch.float64))
            vals.insert(0, torch.zeros(b, 1, dv, dtype=torch.float64))
            fixed.append(1)
        kh = torch.cat(keys, dim=1)
        if q_scale is not None:
            qh = qh * q_scale[head, 0]
            kh = kh * k_scale[head, 0]
        sim = torch.einsum("bid,bjd->bij", qh, kh) * scale
        logits = torch.cat((logits, sim[:, None]), dim=1) if head else sim[:, None]
        values.append(torch.cat(vals, dim=1))
        allowed_cols.append(sum(fixed))
    num_fixed = allowed_cols[0]

    pre = _w(m, "attend.logit_hooks.0.weight")
    if pre is not None:
        logits = torch.einsum("gh,bhij->bgij", pre, logits)
    allowed = torch.ones(b, 1, n, j, dtype=torch.bool)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    if causal:
        allowed = allowed & (torch.arange(j) <= torch.arange(j - n, j)[:, None])
    if c.max_attend_past is not None and context is None:
        allowed = allowed & (
            (torch.arange(j - n, j)[:, None] - torch.arange(j)) <= c.max_attend_past
        )
    allowed = torch.cat((torch.ones(b, 1, n, num_fixed, dtype=torch.bool), allowed), dim=-1)
    allowed = allowed.expand(b, h, n, -1)
    if c.sparse_topk is not None:
        masked = logits.masked_fill(~allowed, float("-inf"))
        top = masked.topk(min(c.sparse_topk, masked.shape[-1]), dim=-1).indices
        in_top = torch.zeros_like(allowed).scatter(-1, top, True)
        allowed = allowed & in_top
    weights = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    weights = weights.nan_to_num(0.0)  # rows with no key at all
    maps = weights
    post = _w(m, "attend.prob_hooks.0.weight")
    if post is not None:
        weights = torch.einsum("gh,bhij->bgij", post, weights)
    out = torch.stack([weights[:, hh] @ values[hh] for hh in range(h)], dim=1)  # (b, h, n, dv)
    if c.tensor_product:
        r = (x @ _w(m, "head_ops.to_r.weight").T).view(b, n, kvh, dv).permute(0, 2, 1, 3)
        r = r[:, [hh // group for hh in range(h)]]
        out = out * r + out
    if c.head_scale:
        out = out * _w(m, "head_ops.head_scale.head_scale_params")
    if c.gate_value_heads:
        gate = x @ _w(m, "head_ops.to_v_head_gate.weight").T + _w(m, "head_ops.to_v_head_gate.bias")
        out = out * torch.sigmoid(gate).permute(0, 2, 1)[..., None]
    out = out.permute(0, 2, 1, 3).reshape(b, n, h * dv)
    if c.gate_values:
        gate = x @ _w(m, "to_v_gate.weight").T + _w(m, "to_v_gate.bias")
        out = out * (gate * torch.sigmoid(gate) if c.swiglu_values else torch.sigmoid(gate))
    if c.on_attn:
        proj = out @ _w(m, "to_out.0.weight").T
        a, g = proj.chunk(2, dim=-1)
        return a * torch.sigmoid(g), maps
    return out @ _w(m, "to_out.weight").T, maps


OPTIONS = {
    "plain": {},
    "kv_heads": dict(heads=4, kv_heads=2),
    "one_kv_head": dict(heads=4, one_kv_head=True),
    "value_dim_head": dict(value_dim_head=5),
    "shared_kv": dict(shared_kv=True),
    "head_scale": dict(head_scale=True),
    "talking_heads": dict(heads=3, talking_heads=True),
    "pre_talking_heads": dict(heads=3, pre_talking_heads=True),
    "post_talking_heads": dict(heads=3, post_talking_heads=True),
    "sparse_topk": dict(sparse_topk=2),
    "qk_norm": dict(qk_norm=True),
    "qk_norm_groups_scale": dict(dim_head=6, qk_norm=True, qk_norm_groups=2, qk_norm_scale=3.0),
    "qk_norm_dim_scale": dict(qk_norm=True, qk_norm_dim_scale=True),
    "qk_norm_dim_scale_gqa": dict(heads=4, kv_heads=2, qk_norm=True, qk_norm_dim_scale=True),
    "num_mem_kv": dict(num_mem_kv=3),
    "add_zero_kv": dict(add_zero_kv=True),
    "on_attn": dict(on_attn=True),
    "gate_values": dict(gate_values=True),
    "swiglu_values": dict(gate_values=True, swiglu_values=True),
    "gate_value_heads": dict(gate_value_heads=True),
    "tensor_product": dict(tensor_product=True),
    "tensor_product_gqa": dict(heads=4, kv_heads=2, tensor_product=True, value_dim_head=3),
    "max_attend_past": dict(max_attend_past=2),
    "everything_fused": dict(
        heads=4,
        kv_heads=2,
        qk_norm=True,
        qk_norm_dim_scale=True,
        num_mem_kv=2,
        add_zero_kv=True,
        on_attn=True,
        gate_values=True,
        gate_value_heads=True,
        head_scale=True,
        tensor_product=True,
        max_attend_past=3,
    ),
    "everything_explicit": dict(
        heads=2, talking_heads=True, sparse_topk=3, num_mem_kv=1, value_dim_head=6, shared_kv=False
    ),
}


def build(options: dict, causal: bool = False, **extra) -> Attention:
    options = dict(options)
    heads, dim_head = options.pop("heads", 2), options.pop("dim_head", 4)
    torch.manual_seed(0)
    m = Attention(DIM, heads=heads, causal=causal, dim_head=dim_head, **options, **extra).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move every weight off its init (gates open at 10, scales at 1)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    return m


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("setting", ["causal", "key-mask", "cross"])
def test_module_matches_float64_reference(name, setting):
    options = OPTIONS[name]
    cross = setting == "cross"
    m = build(options, causal=setting == "causal", **({"dim_context": CTX} if cross else {}))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, DIM, generator=gen)
    context = torch.randn(2, 7, CTX, generator=gen) if cross else None
    key_mask = None
    if setting != "causal":
        key_mask = torch.ones(2, 7 if cross else 5, dtype=torch.bool)
        key_mask[1, -2:] = False
    expected, expected_maps = reference(m, x, context, key_mask, causal=setting == "causal")
    kwargs = dict(context=context.double(), context_mask=key_mask) if cross else dict(mask=key_mask)
    with torch.no_grad():
        got, inter = m.double()(x.double(), **kwargs, return_intermediates=True, return_attn=True)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(inter.post_softmax_attn, expected_maps, atol=1e-10, rtol=1e-10)


def _maps(m: Attention, x: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return m(x, return_intermediates=True, return_attn=True, **kwargs)[1].post_softmax_attn


def test_gqa_equals_mha_with_key_value_heads_repeated_by_hand():
    """kv_heads=2 of 4: query head h reads key/value head h // 2; an MHA layer whose key/value
    heads are those heads, repeated, computes the same."""
    gqa = build(dict(heads=4, kv_heads=2))
    mha = Attention(DIM, heads=4, dim_head=4).eval()
    w = gqa.qkv.to_qkv.weight.detach()
    wq, wk, wv = w[:16], w[16:24], w[24:32]
    repeat = [0, 0, 1, 1]  # key/value head of each query head
    wk_full = torch.cat([wk[4 * g : 4 * g + 4] for g in repeat])
    wv_full = torch.cat([wv[4 * g : 4 * g + 4] for g in repeat])
    with torch.no_grad():
        mha.qkv.to_qkv.weight.copy_(torch.cat((wq, wk_full, wv_full)))
        mha.to_out.weight.copy_(gqa.to_out.weight)
    x = torch.randn(2, 6, DIM)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-6, rtol=1e-6)
    one = build(dict(heads=4, one_kv_head=True))
    assert one.qkv.to_qkv.weight.shape == (16 + 4 + 4, DIM)


def test_sparse_topk_keeps_exactly_k_weights_per_row_among_visible_keys():
    m = build(dict(sparse_topk=3), causal=True)
    x = torch.randn(2, 8, DIM)
    maps = _maps(m, x)
    nonzero = (maps > 0).sum(-1)
    expected = torch.clamp(torch.arange(1, 9), max=3)  # row i sees i + 1 keys
    assert torch.equal(nonzero, expected.expand(2, 2, 8))
    assert torch.equal(maps.triu(1), torch.zeros_like(maps))  # never a future key
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 8))


def test_max_attend_past_gives_zero_weight_beyond_the_window():
    w = 2
    m = build(dict(max_attend_past=w))  # bidirectional: the future stays visible
    maps = _maps(m, torch.randn(1, 7, DIM))
    i, j = torch.arange(7)[:, None], torch.arange(7)
    assert torch.equal(maps[..., i - j > w], torch.zeros_like(maps[..., i - j > w]))
    assert bool((maps[..., i - j <= w] > 0).all())


def test_add_zero_kv_fully_masked_row_attends_to_the_zero_key():
    m = build(dict(add_zero_kv=True))
    x = torch.randn(2, 4, DIM)
    attn_mask = torch.ones(4, 4, dtype=torch.bool)
    attn_mask[2] = False  # query 2 may see no key of the sequence
    with torch.no_grad():
        out, inter = m(x, attn_mask=attn_mask, return_intermediates=True, return_attn=True)
    maps = inter.post_softmax_attn
    assert maps.shape == (2, 2, 4, 5)  # the zero key first
    assert torch.equal(maps[:, :, 2], F.one_hot(torch.tensor(0), 5).float().expand(2, 2, 5))
    assert torch.equal(out[:, 2], torch.zeros(2, DIM))  # the zero value, projected
    assert bool((maps[:, :, [0, 1, 3], 0] > 0).all())  # the others weigh it in too


def test_qk_norm_logits_are_scale_times_cosine():
    m = build(dict(qk_norm=True, qk_norm_scale=7.0))
    x = torch.randn(1, 5, DIM, dtype=torch.float64)
    with torch.no_grad():
        _, inter = m.double()(x, return_intermediates=True, return_attn=True)
    w = m.qkv.to_qkv.weight.detach()
    q = (x @ w[:8].T).view(1, 5, 2, 4)
    k = (x @ w[8:16].T).view(1, 5, 2, 4)
    cos = F.cosine_similarity(q[:, :, None], k[:, None], dim=-1).permute(0, 3, 1, 2)
    torch.testing.assert_close(inter.qk_similarities, 7.0 * cos)
    assert float(inter.qk_similarities.abs().max()) <= 7.0 + 1e-9


def test_memory_kv_are_seen_by_every_query_and_not_cached():
    m = build(dict(num_mem_kv=2), causal=True)
    maps = _maps(m, torch.randn(1, 4, DIM))
    assert maps.shape == (1, 2, 4, 6)
    assert bool((maps[..., :2] > 0).all())  # the first query sees its own key and the memory


def test_head_scale_and_gates_start_as_identity():
    """At init: head scale 1, gates open (sigmoid(10)), so the output is the plain one's to 1e-4."""
    torch.manual_seed(0)
    plain = Attention(DIM, heads=2, dim_head=4)
    torch.manual_seed(0)
    gated = Attention(
        DIM, heads=2, dim_head=4, head_scale=True, gate_values=True, gate_value_heads=True
    )
    assert torch.equal(gated.head_ops["head_scale"].head_scale_params, torch.ones(1, 2, 1, 1))
    assert torch.equal(gated.to_v_gate.bias, torch.full((8,), 10.0))
    assert torch.equal(gated.head_ops["to_v_head_gate"].weight, torch.zeros(2, DIM))
    x = torch.randn(1, 3, DIM)
    torch.testing.assert_close(gated(x), plain(x) * torch.sigmoid(torch.tensor(10.0)) ** 2)


def test_talking_heads_init_is_a_1x1_convolution_init():
    torch.manual_seed(0)
    m = Attention(DIM, heads=64, dim_head=4, talking_heads=True)
    w = m.attend.logit_hooks[0].weight.detach()
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) of a 1x1 conv over 64 channels
    assert float(w.abs().max()) <= bound
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.01
