"""Generation and the KV cache: cached decoding equals recomputation, token for token."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from anyformer import (
    AutoregressiveWrapper,
    Decoder,
    Encoder,
    KVCache,
    TransformerWrapper,
    XTransformer,
)
from anyformer.generation import session

V = 32
DIM = 32
TOL = dict(atol=1e-5, rtol=1e-5)
LENS = (3, 7, 11)
NEW = 64


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# --------------------------------------------------------------------------- builders


def decoder_net(seed=0, max_seq_len=80, **kwargs) -> TransformerWrapper:
    torch.manual_seed(seed)
    layers = Decoder(dim=DIM, depth=2, heads=2, attn_dim_head=16, **kwargs)
    return TransformerWrapper(num_tokens=V, max_seq_len=max_seq_len, attn_layers=layers).eval()


def encoder_net(seed=0) -> TransformerWrapper:
    torch.manual_seed(seed)
    layers = Encoder(dim=DIM, depth=2, heads=2, attn_dim_head=16)
    return TransformerWrapper(num_tokens=V, max_seq_len=40, attn_layers=layers).eval()


def xtransformer(seed=0) -> XTransformer:
    torch.manual_seed(seed)
    return XTransformer(
        dim=DIM,
        enc_num_tokens=V,
        enc_depth=2,
        enc_heads=2,
        enc_attn_dim_head=16,
        enc_max_seq_len=16,
        dec_num_tokens=V,
        dec_depth=2,
        dec_heads=2,
        dec_attn_dim_head=16,
        dec_max_seq_len=80,
    ).eval()


def prompt_list(lens=LENS, seed=1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, V, (n,), generator=g) for n in lens]


def rand_tokens(b, n, seed=2):
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


def right_pad(prompts, pad=0):
    lens = torch.tensor([len(p) for p in prompts])
    out = torch.full((len(prompts), int(lens.max())), pad, dtype=torch.long)
    for i, p in enumerate(prompts):
        out[i, : len(p)] = p
    return out, lens


def greedy_by_hand(net, prompt, steps, **kwargs):
    """Greedy decoding by full recomputation, one row, straight from net's logits."""
    seq = prompt[None]
    for _ in range(steps):
        nxt = net(seq, **kwargs)[:, -1].argmax(-1)
        seq = torch.cat((seq, nxt[:, None]), dim=1)
    return seq[0, len(prompt) :]


# --------------------------------------------------------------------------- training loss


def test_forward_loss_equals_hand_cross_entropy():
    net = decoder_net()
    wrapper = AutoregressiveWrapper(net)
    x = rand_tokens(3, 10)
    loss = wrapper(x)
    logits = net(x[:, :-1])
    expected = F.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
    assert loss.shape == ()
    torch.testing.assert_close(loss, expected, **TOL)
    # x-transformers' layout: (loss, (logits, intermediates)); the cache continues decoding
    loss2, (out, inter) = wrapper(x, return_outputs=True)
    torch.testing.assert_close(out, logits, **TOL)
    torch.testing.assert_close(loss2, expected, **TOL)
    assert inter.cache_length == 9
    nxt = net(x, cache=inter)
    torch.testing.assert_close(nxt[:, -1], net(x)[:, -1], **TOL)


def test_forward_loss_excludes_ignore_index():
    net = decoder_net()
    wrapper = AutoregressiveWrapper(net, ignore_index=-100, pad_value=0)
    x = rand_tokens(2, 9, seed=3)
    x[0, 6:] = -100  # right padding by ignore_index
    x[1, 4] = -100
    loss = wrapper(x)
    inp = x[:, :-1].masked_fill(x[:, :-1] == -100, 0)
    target = x[:, 1:]
    logits = net(inp)
    keep = target != -100
    by_hand = -(logits.log_softmax(-1).gather(-1, target.clamp(min=0)[..., None])[..., 0])
    expected = by_hand[keep].mean()
    torch.testing.assert_close(loss, expected, **TOL)
    torch.testing.assert_close(
        loss, F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100), **TOL
    )
    assert int(keep.sum()) == 16 - 3 - 1


def test_forward_loss_with_mask_skips_masked_targets():
    net = decoder_net()
    wrapper = AutoregressiveWrapper(net)
    x = rand_tokens(2, 8, seed=4)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    loss = wrapper(x, mask=mask)
    logits = net(x[:, :-1], mask=mask[:, :-1])
    target = x[:, 1:].masked_fill(~mask[:, 1:], -100)
    expected = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100)
    torch.testing.assert_close(loss, expected, **TOL)
    nll = -logits.log_softmax(-1).gather(-1, x[:, 1:, None])[..., 0]
    torch.testing.assert_close(loss, nll[mask[:, 1:]].mean(), **TOL)


def test_forward_loss_rejects_short_input():
    wrapper = AutoregressiveWrapper(decoder_net())
    with pytest.raises(ValueError, match="seq_len"):
        wrapper(rand_tokens(2, 1))


# --------------------------------------------------------------------------- cached == uncached


@pytest.mark.parametrize("flash", [False, True])
def test_greedy_cached_equals_uncached_decoder(flash):
    net = decoder_net(attn_flash=flash)
    wrapper = AutoregressiveWrapper(net)
    prompts = prompt_list()
    cached = wrapper.generate(prompts, NEW, temperature=0, cache_kv=True)
    uncached = wrapper.generate(prompts, NEW, temperature=0, cache_kv=False)
    assert cached.shape == (3, NEW)
    assert cached.dtype == torch.long
    assert torch.equal(cached, uncached)
    # and both equal decoding by hand, row by row
    for i in (0, 2):
        assert torch.equal(cached[i], greedy_by_hand(net, prompts[i], NEW))


def test_greedy_flash_and_explicit_generate_same_tokens():
    slow = decoder_net(attn_flash=False)
    fast = decoder_net(attn_flash=True)
    fast.load_state_dict(slow.state_dict())
    prompts = prompt_list()
    a = AutoregressiveWrapper(slow).generate(prompts, 16, temperature=0)
    b = AutoregressiveWrapper(fast).generate(prompts, 16, temperature=0)
    assert torch.equal(a, b)


def _context(b=3, m=5, seed=4):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(b, m, DIM, generator=g)
    context_mask = torch.ones(b, m, dtype=torch.bool)
    context_mask[1, 3:] = False
    context_mask[2, 1] = False
    return context, context_mask


def test_greedy_cached_equals_uncached_cross_attention():
    net = decoder_net(cross_attend=True)
    wrapper = AutoregressiveWrapper(net)
    prompts = prompt_list()
    context, context_mask = _context()
    kw = dict(temperature=0, context=context, context_mask=context_mask)
    cached = wrapper.generate(prompts, NEW, cache_kv=True, **kw)
    uncached = wrapper.generate(prompts, NEW, cache_kv=False, **kw)
    assert cached.shape == (3, NEW)
    assert torch.equal(cached, uncached)
    # the context matters
    other = wrapper.generate(prompts, NEW, temperature=0, context=context.flip(0))
    assert not torch.equal(other, cached)
    # row 1 alone (its own context row) gives the same tokens
    alone = wrapper.generate(
        prompts[1], NEW, temperature=0, context=context[1:2], context_mask=context_mask[1:2]
    )
    assert torch.equal(alone, cached[1])
    by_hand = greedy_by_hand(
        net, prompts[1], NEW, context=context[1:2], context_mask=context_mask[1:2]
    )
    assert torch.equal(by_hand, cached[1])


def test_xtransformer_generate_cached_equals_uncached():
    model = xtransformer()
    g = torch.Generator().manual_seed(5)
    seq_in = torch.randint(0, V, (3, 9), generator=g)
    src_mask = torch.ones(3, 9, dtype=torch.bool)
    src_mask[1, 5:] = False
    src_mask[2, 2:] = False
    start = torch.randint(1, V, (3, 1), generator=g)
    cached = model.generate(seq_in, start, NEW, mask=src_mask, temperature=0, cache_kv=True)
    uncached = model.generate(seq_in, start, NEW, mask=src_mask, temperature=0, cache_kv=False)
    assert cached.shape == (3, NEW)
    assert torch.equal(cached, uncached)
    # equals decoding by hand from the encoder output
    enc = model.encoder(seq_in[2:3], mask=src_mask[2:3])
    by_hand = greedy_by_hand(
        model.decoder.net, start[2], NEW, context=enc, context_mask=src_mask[2:3]
    )
    assert torch.equal(by_hand, cached[2])
    # masked source tokens do not matter
    changed = seq_in.clone()
    changed[~src_mask] = (changed[~src_mask] + 1) % V
    again = model.generate(changed, start, NEW, mask=src_mask, temperature=0)
    assert torch.equal(again, cached)


@pytest.mark.parametrize("cache_kv", [True, False])
def test_variable_length_batch_equals_each_prompt_alone(cache_kv):
    net = decoder_net(seed=6)
    wrapper = AutoregressiveWrapper(net)
    prompts = prompt_list((5, 2, 9, 4), seed=7)
    batch = wrapper.generate(prompts, 24, temperature=0, cache_kv=cache_kv)
    assert batch.shape == (4, 24)
    for i, p in enumerate(prompts):
        alone = wrapper.generate(p, 24, temperature=0, cache_kv=cache_kv)
        assert alone.shape == (24,)
        assert torch.equal(batch[i], alone)
    # a right-padded tensor with prompt_lens is the same as the list
    padded, lens = right_pad(prompts, pad=3)
    same = wrapper.generate(padded, 24, temperature=0, prompt_lens=lens, cache_kv=cache_kv)
    assert torch.equal(same, batch)


def test_variable_length_cross_attention_equals_alone():
    net = decoder_net(seed=8, cross_attend=True)
    wrapper = AutoregressiveWrapper(net)
    prompts = prompt_list((6, 1, 3), seed=9)
    context, context_mask = _context(seed=10)
    batch = wrapper.generate(prompts, 20, temperature=0, context=context, context_mask=context_mask)
    for i, p in enumerate(prompts):
        alone = wrapper.generate(
            p,
            20,
            temperature=0,
            context=context[i : i + 1],
            context_mask=context_mask[i : i + 1],
            cache_kv=False,
        )
        assert torch.equal(batch[i], alone)


def test_full_width_prompt_lens_equals_no_prompt_lens():
    wrapper = AutoregressiveWrapper(decoder_net())
    x = rand_tokens(2, 6, seed=11)
    a = wrapper.generate(x, 10, temperature=0, prompt_lens=torch.tensor([6, 6]))
    b = wrapper.generate(x, 10, temperature=0)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- cached forward


def test_cached_step_logits_match_uncached():
    net = decoder_net(seed=12)
    x = rand_tokens(2, 12, seed=12)
    n = 7
    full = net(x)
    cache = KVCache()
    first = net(x[:, :n], cache=cache)
    assert first.shape == (2, n, V)
    torch.testing.assert_close(first, full[:, :n], **TOL)
    assert cache.length == n
    # whole sequence given: only the new position is computed
    step = net(x[:, : n + 1], cache=cache)
    assert step.shape == (2, 1, V)
    torch.testing.assert_close(step[:, -1], net(x[:, : n + 1])[:, -1], **TOL)
    assert cache.length == n + 1
    # only the new token given
    step = net(x[:, n + 1 : n + 2], cache=cache, input_not_include_cache=True)
    assert step.shape == (2, 1, V)
    torch.testing.assert_close(step[:, -1], full[:, n + 1], **TOL)
    assert cache.length == n + 2
    # three new tokens at once
    chunk = net(x[:, : n + 5], cache=cache)
    assert chunk.shape == (2, 3, V)
    torch.testing.assert_close(chunk, full[:, n + 2 : n + 5], **TOL)
    assert cache.length == n + 5 == 12


def test_cached_chunks_only_new_tokens():
    net = decoder_net(seed=13, attn_flash=True)
    x = rand_tokens(3, 10, seed=13)
    full = net(x)
    cache = KVCache(capacity=10)
    outs = [
        net(x[:, a:b], cache=cache, input_not_include_cache=True)
        for a, b in ((0, 4), (4, 7), (7, 8), (8, 10))
    ]
    assert [o.shape[1] for o in outs] == [4, 3, 1, 2]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL)
    assert cache.length == 10


def test_cached_step_with_key_padding_mask():
    net = decoder_net(seed=14)
    x = rand_tokens(2, 9, seed=14)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 2:4] = False
    full = net(x, mask=mask)
    cache = KVCache()
    first = net(x[:, :5], mask=mask[:, :5], cache=cache)
    torch.testing.assert_close(first, full[:, :5], **TOL)
    rest = net(x, mask=mask, cache=cache)  # whole sequence and whole mask given
    assert rest.shape == (2, 4, V)
    torch.testing.assert_close(rest, full[:, 5:], **TOL)


def test_cached_cross_attention_step_matches_uncached():
    net = decoder_net(seed=15, cross_attend=True)
    x = rand_tokens(3, 8, seed=15)
    context, context_mask = _context(seed=15)
    kw = dict(context=context, context_mask=context_mask)
    full = net(x, **kw)
    cache = KVCache()
    net(x[:, :5], cache=cache, **kw)
    step = net(x[:, :6], cache=cache, **kw)
    torch.testing.assert_close(step[:, -1], full[:, 5], **TOL)
    # later steps can omit the context: its keys/values are cached
    step = net(x[:, 6:8], cache=cache, input_not_include_cache=True)
    torch.testing.assert_close(step, full[:, 6:8], **TOL)


def test_return_intermediates_cache_continues():
    net = decoder_net(seed=16)
    x = rand_tokens(2, 11, seed=16)
    full = net(x)
    logits, inter = net(x[:, :6], return_intermediates=True)
    torch.testing.assert_close(logits, full[:, :6], **TOL)
    assert inter.cache_length == 6
    step = net(x[:, :7], cache=inter)
    assert step.shape == (2, 1, V)
    torch.testing.assert_close(step[:, -1], full[:, 6], **TOL)
    assert inter.cache_length == 7
    more = net(x, cache=inter)
    torch.testing.assert_close(more, full[:, 7:], **TOL)
    assert inter.cache_length == 11


def test_cache_is_preallocated_and_written_in_place():
    net = decoder_net(seed=17)
    x = rand_tokens(2, 20, seed=17)
    full = net(x)
    cache = KVCache(capacity=20)
    net(x[:, :5], cache=cache)
    assert cache.length == 5
    num_self = sum(t == "a" for t in net.attn_layers.layer_types)
    assert len(cache.layers) == num_self == 2
    ptrs = [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers]
    assert all(layer.k.shape == (2, 2, 20, 16) for layer in cache.layers)
    for t in range(5, 20):
        step = net(x[:, t : t + 1], cache=cache, input_not_include_cache=True)
        torch.testing.assert_close(step[:, 0], full[:, t], **TOL)
        assert cache.length == t + 1
        assert [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers] == ptrs
    # the buffer holds the keys of the uncached forward
    _, inter = net(x, return_intermediates=True)
    k_full, v_full = inter.attn_intermediates[0].cached_kv
    torch.testing.assert_close(cache.layers[0].k, k_full, **TOL)
    torch.testing.assert_close(cache.layers[0].v, v_full, **TOL)


def test_cache_without_capacity_grows_geometrically():
    net = decoder_net(seed=18)
    x = rand_tokens(1, 33, seed=18)
    cache = KVCache()
    net(x[:, :4], cache=cache)
    ptr, reallocations = cache.layers[0].k.data_ptr(), 0
    for t in range(4, 33):
        net(x[:, t : t + 1], cache=cache, input_not_include_cache=True)
        if cache.layers[0].k.data_ptr() != ptr:
            ptr, reallocations = cache.layers[0].k.data_ptr(), reallocations + 1
        assert cache.layers[0].k.shape[-2] >= cache.length
    assert cache.length == 33
    assert reallocations <= 4  # 4 -> 8 -> 16 -> 32 -> 64, not one per step


def test_kvcache_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        KVCache(capacity=0)


def test_cache_rejects_input_not_longer_than_cache():
    net = decoder_net()
    x = rand_tokens(1, 6)
    cache = KVCache()
    net(x, cache=cache)
    with pytest.raises(ValueError, match="cache"):
        net(x, cache=cache)


# --------------------------------------------------------------------------- eos


def _reference(wrapper, prompts, steps=NEW):
    return wrapper.generate(prompts, steps, temperature=0, cache_kv=False)


@pytest.mark.parametrize("cache_kv", [True, False])
def test_eos_pads_rows_and_cuts_output(cache_kv):
    wrapper = AutoregressiveWrapper(decoder_net(), pad_value=0)
    prompts = prompt_list()
    ref = _reference(wrapper, prompts)
    # a token (not the pad) that every row emits, at different steps
    firsts = {
        tok: [row.tolist().index(tok) for row in ref]
        for tok in range(1, V)
        if all(tok in row.tolist() for row in ref)
    }
    assert firsts
    eos, first = max(firsts.items(), key=lambda kv: len(set(kv[1])))
    assert max(first) < NEW - 1
    out = wrapper.generate(prompts, NEW, eos_token=eos, temperature=0, cache_kv=cache_kv)
    assert out.shape == (3, max(first) + 1)
    for i, f in enumerate(first):
        assert torch.equal(out[i, : f + 1], ref[i, : f + 1])
        assert int(out[i, f]) == eos
        assert bool((out[i, f + 1 :] == 0).all())


def expected_with_eos(ref, eos, pad):
    """What generate(eos_token=eos) must give, from eos-free greedy tokens `ref`."""
    out = ref.clone()
    firsts = []
    for i, row in enumerate(ref.tolist()):
        if eos in row:
            f = row.index(eos)
            out[i, f + 1 :] = pad
            firsts.append(f)
    if len(firsts) == len(ref):
        out = out[:, : max(firsts) + 1]
    return out


@pytest.mark.parametrize("cache_kv", [True, False])
@pytest.mark.parametrize("steps", [3, 30])
def test_eos_first_token_of_one_row(cache_kv, steps):
    wrapper = AutoregressiveWrapper(decoder_net(seed=19), pad_value=0)
    prompts = prompt_list((4, 6, 5), seed=20)
    ref = _reference(wrapper, prompts, steps)
    eos = int(ref[0, 0])  # row 0 stops at once
    rows_with_eos = sum(eos in row.tolist() for row in ref)
    out = wrapper.generate(prompts, steps, eos_token=eos, temperature=0, cache_kv=cache_kv)
    assert int(out[0, 0]) == eos
    assert bool((out[0, 1:] == 0).all())
    expected = expected_with_eos(ref, eos, pad=0)
    assert torch.equal(out, expected)
    if steps == 3:
        # premise: within 3 steps some row never emits eos, so all 3 columns are kept
        assert rows_with_eos < 3
        assert out.shape == (3, 3)
    else:
        assert rows_with_eos == 3
        assert out.shape[1] < steps


@pytest.mark.parametrize("cache_kv", [True, False])
def test_eos_forced_by_output_head(cache_kv):
    net = decoder_net(seed=21)
    # a zero head gives equal logits, and argmax picks the first maximal index: token 0 wins
    net.to_logits.weight.zero_()
    wrapper = AutoregressiveWrapper(net, pad_value=1)
    out = wrapper.generate(prompt_list(), 16, eos_token=0, temperature=0, cache_kv=cache_kv)
    assert torch.equal(out, torch.zeros(3, 1, dtype=torch.long))
    one = wrapper.generate(prompt_list()[0], 16, eos_token=0, temperature=0, cache_kv=cache_kv)
    assert torch.equal(one, torch.tensor([0]))
    # without eos the same model emits token 0 for all 16 steps
    plain = wrapper.generate(prompt_list(), 16, temperature=0, cache_kv=cache_kv)
    assert torch.equal(plain, torch.zeros(3, 16, dtype=torch.long))


@pytest.mark.parametrize("cache_kv", [True, False])
def test_eos_never_emitted_keeps_seq_len(cache_kv):
    wrapper = AutoregressiveWrapper(decoder_net())
    prompts = prompt_list()
    ref = _reference(wrapper, prompts, 20)
    unused = [t for t in range(1, V) if t not in ref.flatten().tolist()]
    assert unused
    out = wrapper.generate(prompts, 20, eos_token=unused[0], temperature=0, cache_kv=cache_kv)
    assert out.shape == (3, 20)
    assert torch.equal(out, ref)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("cache_kv", [True, False])
def test_sampling_is_reproducible_with_generator(cache_kv):
    wrapper = AutoregressiveWrapper(decoder_net())
    prompts = prompt_list()

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return wrapper.generate(
            prompts,
            24,
            temperature=1.5,
            filter_kwargs=dict(k=V),
            generator=g,
            cache_kv=cache_kv,
        )

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (3, 24)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, _reference(wrapper, prompts, 24))
    assert int(a.min()) >= 0 and int(a.max()) < V


def test_sampling_cached_equals_uncached_with_same_generator():
    wrapper = AutoregressiveWrapper(decoder_net())
    prompts = prompt_list()
    outs = [
        wrapper.generate(
            prompts,
            24,
            temperature=1.0,
            filter_logits_fn="top_p",
            filter_kwargs=dict(thres=0.95),
            generator=torch.Generator().manual_seed(3),
            cache_kv=cache_kv,
        )
        for cache_kv in (True, False)
    ]
    assert torch.equal(outs[0], outs[1])


def test_top_k_one_equals_greedy():
    wrapper = AutoregressiveWrapper(decoder_net())
    prompts = prompt_list()
    greedy = _reference(wrapper, prompts, 24)
    top1 = wrapper.generate(
        prompts,
        24,
        temperature=1.0,
        filter_kwargs=dict(k=1),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(top1, greedy)


@pytest.mark.parametrize(
    "name,kwargs",
    [("top_p", dict(thres=1e-6)), ("min_p", dict(min_p=1.0)), ("top_k", dict(k=1))],
)
def test_filter_by_name_collapsing_to_greedy(name, kwargs):
    wrapper = AutoregressiveWrapper(decoder_net())
    prompts = prompt_list()
    greedy = _reference(wrapper, prompts, 16)
    out = wrapper.generate(
        prompts,
        16,
        temperature=2.0,
        filter_logits_fn=name,
        filter_kwargs=kwargs,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(out, greedy)


def test_filter_by_name_top_p_samples():
    wrapper = AutoregressiveWrapper(decoder_net())
    out = wrapper.generate(
        prompt_list(),
        16,
        filter_logits_fn="top_p",
        filter_kwargs=dict(thres=0.9),
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (3, 16)
    assert int(out.min()) >= 0 and int(out.max()) < V


def test_unknown_filter_name_raises():
    wrapper = AutoregressiveWrapper(decoder_net())
    with pytest.raises(ValueError, match="filter_logits_fn"):
        wrapper.generate(prompt_list(), 4, filter_logits_fn="top_q")


def test_temperature_zero_ignores_generator_and_one_d_prompt():
    wrapper = AutoregressiveWrapper(decoder_net())
    p = prompt_list()[1]
    a = wrapper.generate(p, 12, temperature=0, generator=torch.Generator().manual_seed(0))
    b = wrapper.generate(p, 12, temperature=0, generator=torch.Generator().manual_seed(1))
    assert a.shape == (12,)
    assert torch.equal(a, b)
    assert torch.equal(a, greedy_by_hand(wrapper.net, p, 12))


def test_generate_restores_training_mode():
    net = decoder_net()
    net.train()
    AutoregressiveWrapper(net).generate(prompt_list(), 3, temperature=0)
    assert net.training is True


# --------------------------------------------------------------------------- errors


def test_seq_len_zero_raises():
    wrapper = AutoregressiveWrapper(decoder_net())
    with pytest.raises(ValueError, match="seq_len"):
        wrapper.generate(prompt_list(), 0)


def test_prompt_token_out_of_vocab_raises():
    wrapper = AutoregressiveWrapper(decoder_net())
    bad = torch.tensor([[1, 2, V]])
    with pytest.raises(ValueError, match="prompts"):
        wrapper.generate(bad, 4)
    with pytest.raises(ValueError, match="prompts"):
        wrapper.generate([torch.tensor([1, 2]), torch.tensor([V + 3])], 4)


@pytest.mark.parametrize("lens", [[0, 3], [2, 5], [-1, 1]])
def test_prompt_lens_out_of_range_raises(lens):
    wrapper = AutoregressiveWrapper(decoder_net())
    prompts = rand_tokens(2, 4)
    with pytest.raises(ValueError, match="prompt_lens"):
        wrapper.generate(prompts, 4, prompt_lens=torch.tensor(lens))


def test_prompt_lens_wrong_shape_raises():
    wrapper = AutoregressiveWrapper(decoder_net())
    with pytest.raises(ValueError, match="prompt_lens"):
        wrapper.generate(rand_tokens(2, 4), 4, prompt_lens=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="prompt_lens"):
        wrapper.generate(prompt_list(), 4, prompt_lens=torch.tensor([3, 7, 11]))


def test_cache_with_encoder_raises():
    net = encoder_net()
    with pytest.raises(ValueError, match="cache"):
        net(rand_tokens(2, 5), cache=KVCache())
    with pytest.raises(ValueError, match="cache"):
        net.attn_layers(torch.randn(2, 5, DIM), cache=KVCache())


# --------------------------------------------------------------------------- non-causal fallback


def test_encoder_generate_warns_once_and_recomputes(monkeypatch):
    monkeypatch.setattr(session, "_warned", session.WeakKeyDictionary())
    wrapper = AutoregressiveWrapper(encoder_net())
    prompts = prompt_list((3, 6), seed=22)
    with pytest.warns(UserWarning, match="cache") as record:
        cached = wrapper.generate(prompts, 10, temperature=0, cache_kv=True)
    assert len([w for w in record if issubclass(w.category, UserWarning)]) == 1
    uncached = wrapper.generate(prompts, 10, temperature=0, cache_kv=False)
    assert cached.shape == (2, 10)
    assert torch.equal(cached, uncached)
    # a non-causal model: each step recomputes the whole (bidirectional) prefix
    assert torch.equal(cached[1], greedy_by_hand(wrapper.net, prompts[1], 10))
    # once: the second call does not warn again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = wrapper.generate(prompts, 10, temperature=0, cache_kv=True)
    assert torch.equal(again, cached)


# --------------------------------------------------------------------------- past max_seq_len


def windowed_net(depth=1, seed=23, **kwargs) -> TransformerWrapper:
    """No absolute positions, so generation may slide a max_seq_len window."""
    torch.manual_seed(seed)
    layers = Decoder(dim=DIM, depth=depth, heads=2, attn_dim_head=16)
    return TransformerWrapper(num_tokens=V, max_seq_len=12, attn_layers=layers, **kwargs).eval()


def greedy_windowed_by_hand(net, prompt, steps, window):
    seq = prompt[None]
    for _ in range(steps):
        nxt = net(seq[:, -window:])[:, -1].argmax(-1)
        seq = torch.cat((seq, nxt[:, None]), dim=1)
    return seq[0, len(prompt) :]


def test_sliding_window_cached_equals_uncached_one_layer():
    # with one layer, masking keys older than the window is exactly recomputation on the window
    wrapper = AutoregressiveWrapper(windowed_net(use_abs_pos_emb=False))
    prompt = prompt_list((10,), seed=24)[0]
    cached = wrapper.generate(prompt, 20, temperature=0, cache_kv=True)
    uncached = wrapper.generate(prompt, 20, temperature=0, cache_kv=False)
    assert cached.shape == (20,)
    assert torch.equal(cached, uncached)
    assert torch.equal(uncached, greedy_windowed_by_hand(wrapper.net, prompt, 20, 12))


@pytest.mark.parametrize("cache_kv", [True, False])
def test_sliding_window_variable_length_rows_equal_alone(cache_kv):
    # each row must slide its own window over its own tokens (pad columns are not context)
    wrapper = AutoregressiveWrapper(windowed_net(use_abs_pos_emb=False))
    prompts = prompt_list((3, 7, 10), seed=25)
    batch = wrapper.generate(prompts, 20, temperature=0, cache_kv=cache_kv)
    for i, p in enumerate(prompts):
        alone = greedy_windowed_by_hand(wrapper.net, p, 20, 12)
        assert torch.equal(batch[i], alone), f"row {i} (prompt length {len(p)})"


def test_abs_pos_emb_past_max_seq_len_warns_and_recomputes(monkeypatch):
    monkeypatch.setattr(session, "_warned", session.WeakKeyDictionary())
    wrapper = AutoregressiveWrapper(windowed_net(depth=2))
    prompt = prompt_list((8,), seed=26)[0]
    with pytest.warns(UserWarning, match="max_seq_len"):
        cached = wrapper.generate(prompt, 10, temperature=0, cache_kv=True)
    uncached = wrapper.generate(prompt, 10, temperature=0, cache_kv=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(uncached, greedy_windowed_by_hand(wrapper.net, prompt, 10, 12))
