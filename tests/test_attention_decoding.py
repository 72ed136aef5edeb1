"""Every attention option inside a model: causality, batch independence, padding invariance,
and cached greedy decoding equal to uncached decoding."""

from __future__ import annotations

import pytest
import torch

from anyformer import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper

OPTIONS = {
    "plain": {},
    "kv_heads": dict(heads=4, attn_kv_heads=2),
    "one_kv_head": dict(heads=4, attn_one_kv_head=True),
    "value_dim_head": dict(attn_value_dim_head=6),
    "shared_kv": dict(attn_shared_kv=True),
    "head_scale": dict(attn_head_scale=True),
    "talking_heads": dict(heads=3, attn_talking_heads=True),
    "sparse_topk": dict(attn_sparse_topk=3),
    "qk_norm": dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True),
    "num_mem_kv": dict(attn_num_mem_kv=2),
    "add_zero_kv": dict(attn_add_zero_kv=True),
    "on_attn": dict(attn_on_attn=True),
    "gate_values": dict(attn_gate_values=True, attn_swiglu_values=True),
    "gate_value_heads": dict(attn_gate_value_heads=True),
    "tensor_product": dict(attn_tensor_product=True),
    "max_attend_past": dict(attn_max_attend_past=3),
    "residual_attn": dict(residual_attn=True),
    "combo": dict(
        heads=4,
        attn_kv_heads=2,
        attn_qk_norm=True,
        attn_gate_values=True,
        attn_num_mem_kv=2,
        attn_add_zero_kv=True,
        attn_talking_heads=True,
        residual_attn=True,
        attn_max_attend_past=4,
    ),
}


def model(stack_cls, options: dict, seed: int = 0) -> TransformerWrapper:
    options = dict(options)
    heads = options.pop("heads", 2)
    torch.manual_seed(seed)
    net = TransformerWrapper(
        num_tokens=32,
        max_seq_len=48,
        attn_layers=stack_cls(dim=16, depth=2, heads=heads, attn_dim_head=8, **options),
    ).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return net


@pytest.mark.parametrize("name", list(OPTIONS))
def test_decoder_is_causal_and_rows_are_independent(name):
    net = model(Decoder, OPTIONS[name])
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 32, (3, 10), generator=gen)
    changed = x.clone()
    changed[:, 6:] = torch.randint(0, 32, (3, 4), generator=gen)
    with torch.no_grad():
        a, b = net(x), net(changed)
        alone = net(x[1:2])
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-5, rtol=1e-5)
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-3  # the later tokens do matter
    torch.testing.assert_close(alone[0], a[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_encoder_outputs_ignore_padded_tokens(name):
    net = model(Encoder, OPTIONS[name])
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(0, 32, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    changed = x.clone()
    changed[0, 6:] = (x[0, 6:] + 1) % 32
    with torch.no_grad():
        a, b = net(x, mask=mask), net(changed, mask=mask)
    torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_cached_greedy_decoding_equals_uncached(name):
    net = model(Decoder, OPTIONS[name], seed=5)
    gen = torch.Generator().manual_seed(6)
    prompts = [torch.randint(0, 32, (n,), generator=gen) for n in (5, 8)]
    wrapper = AutoregressiveWrapper(net)
    cached = wrapper.generate(prompts, 32, temperature=0.0, cache_kv=True)
    uncached = wrapper.generate(prompts, 32, temperature=0.0, cache_kv=False)
    assert cached.shape == (2, 32)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", ["plain", "talking_heads", "combo"])
def test_cached_step_logits_match_the_full_forward(name):
    """The last position's logits from a cached step equal the uncached forward's to 1e-5."""
    net = model(Decoder, OPTIONS[name], seed=7)
    x = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        full = net(x)
        _, inter = net(x[:, :9], return_intermediates=True)
        for t in range(9, 12):
            step = net(x[:, : t + 1], cache=inter, return_intermediates=True)
            logits, inter = step
            torch.testing.assert_close(logits[:, -1], full[:, t], atol=1e-5, rtol=1e-5)
