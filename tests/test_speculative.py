"""Speculative decoding: greedy identity, the target's distribution, caches after rollbacks."""

from __future__ import annotations

import math

import pytest
import torch
from gen_models import (
    all_sequences,
    chi_square_p_value,
    counts_of,
    decoder_net,
    float64_copy,
    greedy_by_hand,
    prompt_list,
    sequence_log_probs,
)

from anyformer import AutoregressiveWrapper, Decoder, KVCache, TransformerWrapper, XTransformer
from anyformer.generation.prompts import positions

NEW = 64


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _context(b, seed=4):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(b, 5, 32, generator=g)
    context_mask = torch.ones(b, 5, dtype=torch.bool)
    context_mask[-1, 3:] = False
    return dict(context=context, context_mask=context_mask)


# name -> (stack keywords, wrapper keywords, prompt lengths, cross-attention context?)
MODELS = {
    "decoder": (dict(), dict(), (5,), False),
    "flash, prompts of different lengths": (dict(attn_flash=True), dict(), (3, 8, 5), False),
    "cross-attention": (dict(cross_attend=True), dict(), (4, 6), True),
    "no absolute positions": (dict(), dict(use_abs_pos_emb=False), (6, 2), False),
}


def _build(name, seed, depth):
    layer_kw, wrapper_kw, _, _ = MODELS[name]
    torch.manual_seed(seed)
    layers = Decoder(dim=32, depth=depth, heads=2, attn_dim_head=16, **layer_kw)
    net = TransformerWrapper(num_tokens=32, max_seq_len=96, attn_layers=layers, **wrapper_kw)
    return net.eval()


# --------------------------------------------------------------------------- greedy identity


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_equals_plain_greedy(name, k):
    target, draft = _build(name, seed=0, depth=2), _build(name, seed=1, depth=1)
    _, _, lens, cross = MODELS[name]
    prompts = prompt_list(lens, seed=2)
    kw = _context(len(lens)) if cross else {}
    wrapper = AutoregressiveWrapper(target)
    plain = wrapper.generate(prompts, NEW, temperature=0, cache_kv=False, **kw)
    spec, inter = wrapper.generate(
        prompts,
        NEW,
        temperature=0,
        draft_model=draft,
        draft_tokens=k,
        return_intermediates=True,
        **kw,
    )
    assert spec.shape == (len(lens), NEW)
    assert torch.equal(spec, plain)
    row = {key: v[:1] for key, v in kw.items()}
    assert torch.equal(spec[0], greedy_by_hand(target, prompts[0], NEW, **row))
    stats = inter.speculative
    assert stats.target_calls == 1 + stats.rounds
    assert stats.proposed > 0 and 0 <= stats.accepted <= stats.proposed


@pytest.mark.parametrize("k", [1, 3, 8])
def test_draft_equal_to_target_accepts_everything(k):
    target = decoder_net(seed=0)
    wrapper = AutoregressiveWrapper(target)
    prompts = prompt_list((5, 9), seed=3)
    out, inter = wrapper.generate(
        prompts, NEW, temperature=0, draft_model=target, draft_tokens=k, return_intermediates=True
    )
    assert torch.equal(out, wrapper.generate(prompts, NEW, temperature=0))
    stats = inter.speculative
    assert stats.accepted == stats.proposed
    # the first token comes from the prompt pass; each round then makes k + 1 tokens
    # (the last round fewer: k is capped so that a round never overshoots seq_len)
    assert stats.rounds == math.ceil((NEW - 1) / (k + 1))
    assert stats.target_calls == 1 + stats.rounds
    assert stats.acceptance_rate == 1.0


def test_greedy_with_eos_equals_plain_greedy_with_eos():
    target, draft = decoder_net(seed=0), decoder_net(seed=5, depth=1)
    wrapper = AutoregressiveWrapper(target, pad_value=0)
    prompts = prompt_list((4, 7, 5), seed=6)
    ref = wrapper.generate(prompts, 40, temperature=0)
    eos = int(ref[1, 10])
    plain = wrapper.generate(prompts, 40, temperature=0, eos_token=eos, cache_kv=False)
    spec = wrapper.generate(prompts, 40, temperature=0, eos_token=eos, draft_model=draft)
    assert torch.equal(spec, plain)
    first = ref[1].tolist().index(eos)
    assert int(spec[1, first]) == eos and bool((spec[1, first + 1 :] == 0).all())


def test_xtransformer_with_a_draft_decoder_equals_plain_greedy():
    torch.manual_seed(7)
    kw = dict(enc_num_tokens=32, enc_depth=1, enc_heads=2, enc_max_seq_len=16)
    model = XTransformer(
        dim=32, dec_num_tokens=32, dec_depth=2, dec_heads=2, dec_max_seq_len=80, **kw
    ).eval()
    small = XTransformer(
        dim=32, dec_num_tokens=32, dec_depth=1, dec_heads=2, dec_max_seq_len=80, **kw
    ).eval()
    src = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(8))
    start = torch.tensor([[3], [5]])
    plain = model.generate(src, start, 48, temperature=0, cache_kv=False)
    spec = model.generate(
        src, start, 48, temperature=0, draft_model=small.decoder.net, draft_tokens=3
    )
    assert torch.equal(spec, plain)


# --------------------------------------------------------------------------- caches


def _fresh_prefill(net, prompts_padded, lens, new_tokens, **kw):
    """A new KVCache filled in one pass with the prompts and the given appended tokens."""
    b, n = prompts_padded.shape
    m = new_tokens.shape[1]
    tokens = torch.cat((prompts_padded, new_tokens), dim=1)
    mask = torch.cat((torch.arange(n) < lens[:, None], torch.ones(b, m, dtype=torch.bool)), dim=1)
    pos = positions(n, n + m, lens, tokens.device).expand(b, -1)
    cache = KVCache()
    net(tokens, mask=mask, pos=pos, cache=cache, **kw)
    return cache


def _assert_cache_equal(cache, fresh):
    assert cache.length == fresh.length
    for mine, ref in zip(cache.layers, fresh.layers, strict=True):
        torch.testing.assert_close(mine.k[:, :, : cache.length], ref.k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.v[:, :, : cache.length], ref.v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.key_mask[:, : cache.length], fresh.key_mask[:, : cache.length])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_caches_equal_a_fresh_prefill_of_the_accepted_text(temperature):
    target, draft = decoder_net(seed=0), decoder_net(seed=9, depth=1)
    prompts = prompt_list((3, 8, 5), seed=10)
    lens = torch.tensor([3, 8, 5])
    padded = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    out, inter = AutoregressiveWrapper(target).generate(
        prompts,
        NEW,
        temperature=temperature,
        filter_kwargs=dict(k=32),
        draft_model=draft,
        draft_tokens=4,
        generator=torch.Generator().manual_seed(0),
        return_intermediates=True,
    )
    stats = inter.speculative
    assert stats.accepted < stats.proposed  # premise: some drafts were rejected and rolled back
    # the target has consumed every token but the last
    assert inter.cache.length == 8 + NEW - 1
    _assert_cache_equal(inter.cache, _fresh_prefill(target, padded, lens, out[:, : NEW - 1]))
    # the draft holds a prefix of the text
    consumed = inter.draft_cache.length - 8
    assert NEW - 1 - 4 <= consumed <= NEW - 1
    _assert_cache_equal(inter.draft_cache, _fresh_prefill(draft, padded, lens, out[:, :consumed]))


# --------------------------------------------------------------------------- distribution


def _exact_joint(target, prompt, length, temperature=1.0, keep_top=None):
    seqs = all_sequences(4, length)
    logp = sequence_log_probs(float64_copy(target), prompt, seqs, temperature, keep_top)
    return logp.exp()


@pytest.mark.parametrize("temperature,top", [(1.0, 4), (0.7, 3)], ids=["T=1", "T=0.7,top_k=3"])
def test_sampling_keeps_the_target_distribution(temperature, top):
    target = decoder_net(seed=11, vocab=4, dim=16, depth=1, logit_scale=2.5)
    draft = decoder_net(seed=12, vocab=4, dim=16, depth=1, logit_scale=2.5)
    prompt = prompt_list((3,), vocab=4, seed=13)[0]
    n = 20000
    kw = dict(temperature=temperature, filter_kwargs=dict(k=top))
    out, inter = AutoregressiveWrapper(target).generate(
        prompt[None].expand(n, -1),
        4,
        draft_model=draft,
        draft_tokens=2,
        generator=torch.Generator().manual_seed(0),
        return_intermediates=True,
        **kw,
    )
    assert inter.speculative.accepted < inter.speculative.proposed  # premise: rejections
    truth = _exact_joint(target, prompt, 4, temperature, top)
    counts = counts_of(out, 4)
    assert chi_square_p_value(counts, truth) > 1e-3
    # the test has power: the draft's own distribution is rejected
    assert chi_square_p_value(counts, _exact_joint(draft, prompt, 4, temperature, top)) < 1e-6


def test_sampling_over_seeds_single_row():
    # one row per call (the textbook algorithm), one seed per call; tokens 2 and 3 come from
    # the speculative round (token 1 from the prompt pass)
    target = decoder_net(seed=14, vocab=4, dim=16, depth=1, logit_scale=2.5)
    draft = decoder_net(seed=15, vocab=4, dim=16, depth=1, logit_scale=2.5)
    wrapper = AutoregressiveWrapper(target)
    prompt = prompt_list((2,), vocab=4, seed=16)[0]
    outs = torch.stack(
        [
            wrapper.generate(
                prompt,
                3,
                filter_kwargs=dict(k=4),
                draft_model=draft,
                draft_tokens=2,
                generator=torch.Generator().manual_seed(seed),
            )
            for seed in range(400)
        ]
    )
    joint = _exact_joint(target, prompt, 3).view(4, 4, 4)
    for index, marginal in ((1, joint.sum(dim=(0, 2))), (2, joint.sum(dim=(0, 1)))):
        counts = torch.bincount(outs[:, index], minlength=4)
        assert chi_square_p_value(counts, marginal, min_expected=1.0) > 1e-3


# --------------------------------------------------------------------------- errors


def test_speculative_argument_errors():
    target = decoder_net(seed=0)
    wrapper = AutoregressiveWrapper(target)
    prompt = prompt_list((4,))[0]
    with pytest.raises(ValueError, match="vocabulary"):
        wrapper.generate(prompt, 4, draft_model=decoder_net(vocab=16))
    with pytest.raises(ValueError, match="draft_tokens"):
        wrapper.generate(prompt, 4, draft_model=target, draft_tokens=0)
    with pytest.raises(ValueError, match="cannot be combined"):
        wrapper.generate(prompt, 4, draft_model=target, amateur_model=target)
    with pytest.raises(ValueError, match="max_seq_len"):
        wrapper.generate(prompt, 100, draft_model=target)
    with pytest.raises(TypeError, match="draft_model"):
        wrapper.generate(prompt, 4, draft_model="small")
