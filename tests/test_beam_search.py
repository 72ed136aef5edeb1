"""Beam search against brute force over every sequence of a 5-token vocabulary."""

from __future__ import annotations

import pytest
import torch
from gen_models import (
    Biased,
    all_sequences,
    chi_square_p_value,
    counts_of,
    decoder_net,
    float64_copy,
    greedy_by_hand,
    prompt_list,
    sequence_log_probs,
    step_log_probs,
)

from anyformer import AutoregressiveWrapper, KVCache, TransformerWrapper, XTransformer
from anyformer.stack import Decoder

V5 = 5


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def tiny5(seed=0, logit_scale=3.0, **kwargs):
    return decoder_net(seed=seed, vocab=V5, dim=16, depth=1, logit_scale=logit_scale, **kwargs)


def brute_force(net, prompt, length, eos=None, length_penalty=0.0, **kwargs):
    """(sequences, scores) of every continuation, best first: eos ends a sequence early.

    Scores are float64 summed log-probs / num_tokens ** length_penalty, from full recomputation.
    """
    seqs = all_sequences(V5, length)
    logps = step_log_probs(float64_copy(net), prompt, seqs, **kwargs)
    out = {}
    for seq, lp in zip(seqs.tolist(), logps):
        cut = seq.index(eos) + 1 if eos is not None and eos in seq else length
        key = tuple(seq[:cut])
        if key not in out:
            out[key] = float(lp[:cut].sum()) / cut**length_penalty
    ranked = sorted(out.items(), key=lambda kv: -kv[1])
    return [list(s) for s, _ in ranked], [v for _, v in ranked]


def padded(seq, length, pad):
    return seq + [pad] * (length - len(seq))


# --------------------------------------------------------------------------- exhaustive search


@pytest.mark.parametrize("cache_kv", [True, False])
def test_exhaustive_beams_return_the_brute_force_best(cache_kv):
    net = tiny5()
    wrapper = AutoregressiveWrapper(net)
    prompts = prompt_list((4, 2), vocab=V5, seed=3)
    best = wrapper.beam_search(prompts, 3, beams=125, cache_kv=cache_kv)
    tokens, scores = wrapper.beam_search(
        prompts, 3, beams=125, return_beams_and_scores=True, cache_kv=cache_kv
    )
    assert best.shape == (2, 3)
    assert tokens.shape == (125, 2, 3) and scores.shape == (125, 2)
    for row, prompt in enumerate(prompts):
        seqs, truth = brute_force(net, prompt, 3)
        assert best[row].tolist() == seqs[0]
        # all 125 sequences, each once, best first, scored by their summed log-probs
        assert tokens[:, row].tolist() == seqs
        torch.testing.assert_close(
            scores[:, row].double(), torch.tensor(truth, dtype=torch.float64), atol=2e-5, rtol=0
        )


def test_narrow_beam_score_is_the_summed_log_prob_of_its_tokens():
    net = tiny5(seed=1)
    wrapper = AutoregressiveWrapper(net)
    prompt = prompt_list((5,), vocab=V5, seed=4)[0]
    tokens, scores = wrapper.beam_search(prompt, 6, beams=3, return_beams_and_scores=True)
    assert tokens.shape == (3, 6)
    by_hand = sequence_log_probs(float64_copy(net), prompt, tokens)
    torch.testing.assert_close(scores.double(), by_hand, atol=2e-5, rtol=0)
    assert bool((scores[:-1] >= scores[1:]).all())


def test_one_beam_equals_greedy():
    net = decoder_net(seed=2)
    wrapper = AutoregressiveWrapper(net)
    prompts = prompt_list((3, 7, 5), seed=5)
    beam = wrapper.beam_search(prompts, 24, beams=1)
    greedy = wrapper.generate(prompts, 24, temperature=0)
    assert beam.shape == (3, 24)
    assert torch.equal(beam, greedy)
    assert torch.equal(beam[1], greedy_by_hand(net, prompts[1], 24))


@pytest.mark.parametrize("flash", [False, True])
def test_cached_equals_uncached_and_rows_equal_alone(flash):
    wrapper = AutoregressiveWrapper(decoder_net(seed=3, attn_flash=flash))
    prompts = prompt_list((6, 2, 9), seed=6)
    kw = dict(beams=4, return_beams_and_scores=True)
    cached, cached_scores = wrapper.beam_search(prompts, 16, cache_kv=True, **kw)
    uncached, uncached_scores = wrapper.beam_search(prompts, 16, cache_kv=False, **kw)
    assert cached.shape == (4, 3, 16)
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(cached_scores, uncached_scores, atol=1e-5, rtol=0)
    for i, p in enumerate(prompts):
        alone, alone_scores = wrapper.beam_search(p, 16, **kw)
        assert torch.equal(alone, cached[:, i])
        torch.testing.assert_close(alone_scores, cached_scores[:, i], atol=1e-5, rtol=0)


def test_cache_moves_rows_in_place_after_the_first_expansion(monkeypatch):
    net = decoder_net(seed=4)
    moved, original = [], KVCache.reorder

    def spy(self, rows):
        before = [layer.k.data_ptr() for layer in self.layers]
        original(self, rows)
        moved.append(before != [layer.k.data_ptr() for layer in self.layers])

    monkeypatch.setattr(KVCache, "reorder", spy)
    AutoregressiveWrapper(net).beam_search(prompt_list((4, 4), seed=7), 12, beams=4)
    assert len(moved) == 12  # the expansion to beams, then one reorder per fed step (11)
    assert moved == [True] + [False] * 11


# --------------------------------------------------------------------------- eos


def _eos_with_short_best(net, prompt, length):
    """An eos token for which the brute-force best sequence stops before `length` tokens."""
    for eos in range(V5):
        seqs, _ = brute_force(net, prompt, length, eos=eos)
        if len(seqs[0]) < length:
            return eos
    raise AssertionError("premise: some eos token ends the best sequence early")


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("cache_kv", [True, False])
def test_eos_exhaustive_matches_brute_force(length_penalty, cache_kv):
    net = tiny5(seed=5)
    wrapper = AutoregressiveWrapper(net, pad_value=0)
    prompt = prompt_list((3,), vocab=V5, seed=8)[0]
    eos = _eos_with_short_best(net, prompt, 3)
    seqs, truth = brute_force(net, prompt, 3, eos=eos, length_penalty=length_penalty)
    assert len(seqs) == 1 + 4 + 16 + 4 * 4 * 4  # 85 distinct eos-terminated sequences
    kw = dict(eos_token=eos, length_penalty=length_penalty, cache_kv=cache_kv)
    tokens, scores = wrapper.beam_search(prompt, 3, beams=128, return_beams_and_scores=True, **kw)
    assert tokens.shape == (128, 3)
    assert tokens[:85].tolist() == [padded(s, 3, 0) for s in seqs]
    torch.testing.assert_close(
        scores[:85].double(), torch.tensor(truth, dtype=torch.float64), atol=2e-5, rtol=0
    )
    assert bool(torch.isneginf(scores[85:]).all())  # more beams than sequences
    best = wrapper.beam_search(prompt, 3, beams=128, **kw)
    assert best.tolist() == seqs[0]  # cut after its eos: it is the only row


def test_eos_rows_stop_and_are_padded():
    net = decoder_net(seed=6)
    wrapper = AutoregressiveWrapper(net, pad_value=1)
    prompts = prompt_list((4, 6, 3), seed=9)
    greedy = wrapper.generate(prompts, 20, temperature=0)
    eos = int(greedy[0, 2])  # row 0's greedy path emits it at step 3
    assert eos != 1  # premise: eos is not the pad
    tokens, scores = wrapper.beam_search(
        prompts, 20, beams=3, eos_token=eos, return_beams_and_scores=True
    )
    assert tokens.shape[0] == 3 and tokens.shape[1] == 3
    net64 = float64_copy(net)
    for beam in range(3):
        for row, prompt in enumerate(prompts):
            seq = tokens[beam, row].tolist()
            cut = seq.index(eos) + 1 if eos in seq else len(seq)
            assert all(t == 1 for t in seq[cut:])  # padded after eos
            by_hand = sequence_log_probs(net64, prompt, torch.tensor([seq[:cut]]))
            torch.testing.assert_close(scores[beam, row].double(), by_hand[0], atol=2e-5, rtol=0)
    assert bool((scores[:-1] >= scores[1:]).all())  # best first


def test_eos_search_stops_early_once_no_live_beam_can_win():
    bias = torch.zeros(32)
    bias[3] = 8.0  # eos = 3 takes ~99.7% of every step's mass
    net = Biased(decoder_net(seed=7), bias)
    wrapper = AutoregressiveWrapper(net, pad_value=0)
    out = wrapper.beam_search(prompt_list((4,), seed=10), 30, beams=2, eos_token=3)
    assert out.tolist() == [[3]]
    # step 1 finishes [eos]; step 2 finishes [x, eos] (pool full) while the live [x, y] fall
    # ~8 nats behind it: the search stops there, after the prompt pass and one fed step
    assert net.calls == 2


# --------------------------------------------------------------------------- stochastic


def test_stochastic_single_beam_samples_the_model_distribution():
    net = decoder_net(seed=8, vocab=4, dim=16, depth=1, logit_scale=2.0)
    wrapper = AutoregressiveWrapper(net)
    prompt = prompt_list((3,), vocab=4, seed=11)[0]
    n = 6000
    out = wrapper.beam_search(
        prompt[None].expand(n, -1),
        2,
        beams=1,
        stochastic=True,
        temperature=0.7,
        generator=torch.Generator().manual_seed(0),
    )
    seqs = all_sequences(4, 2)
    truth = sequence_log_probs(float64_copy(net), prompt, seqs, temperature=0.7).exp()
    counts = counts_of(out, 4)
    assert chi_square_p_value(counts, truth) > 1e-3
    # the test has power: greedy's point mass, or temperature 1, are rejected
    truth_t1 = sequence_log_probs(float64_copy(net), prompt, seqs).exp()
    assert chi_square_p_value(counts, truth_t1) < 1e-6


def test_stochastic_full_width_returns_every_sequence_with_its_log_prob():
    net = tiny5(seed=9)
    wrapper = AutoregressiveWrapper(net)
    prompt = prompt_list((3,), vocab=V5, seed=12)[0]
    tokens, scores = wrapper.beam_search(
        prompt,
        2,
        beams=25,
        stochastic=True,
        return_beams_and_scores=True,
        generator=torch.Generator().manual_seed(1),
    )
    seqs, truth = brute_force(net, prompt, 2)
    got = {tuple(t): float(s) for t, s in zip(tokens.tolist(), scores)}
    want = dict(zip(map(tuple, seqs), truth))
    assert set(got) == set(want)
    for seq, score in want.items():
        assert abs(got[seq] - score) < 2e-5


# --------------------------------------------------------------------------- encoder-decoder


def test_xtransformer_beam_search_exhaustive_and_one_beam_greedy():
    torch.manual_seed(10)
    model = XTransformer(
        dim=16,
        enc_num_tokens=V5,
        enc_depth=1,
        enc_heads=2,
        enc_max_seq_len=8,
        dec_num_tokens=V5,
        dec_depth=1,
        dec_heads=2,
        dec_max_seq_len=16,
    ).eval()
    model.decoder.net.to_logits.weight.mul_(3.0)
    src = torch.randint(0, V5, (2, 6), generator=torch.Generator().manual_seed(13))
    src_mask = torch.ones(2, 6, dtype=torch.bool)
    src_mask[1, 4:] = False
    start = torch.tensor([[1], [2]])
    greedy = model.generate(src, start, 5, mask=src_mask, temperature=0)
    one = model.beam_search(src, start, 5, mask=src_mask, beams=1)
    assert torch.equal(one, greedy)
    best = model.beam_search(src, start, 3, mask=src_mask, beams=125)
    model64 = float64_copy(model)
    for row in range(2):
        enc = model64.encoder(src[row : row + 1], mask=src_mask[row : row + 1])
        seqs, _ = brute_force(
            model.decoder.net,
            start[row],
            3,
            context=enc.expand(125, -1, -1),
            context_mask=src_mask[row : row + 1].expand(125, -1),
        )
        assert best[row].tolist() == seqs[0]


# --------------------------------------------------------------------------- errors


def test_beam_search_argument_errors():
    wrapper = AutoregressiveWrapper(decoder_net())
    prompt = prompt_list((3,))[0]
    with pytest.raises(ValueError, match="beams"):
        wrapper.beam_search(prompt, 4, beams=0)
    with pytest.raises(ValueError, match="temperature"):
        wrapper.beam_search(prompt, 4, stochastic=True, temperature=0)
    with pytest.raises(ValueError, match="seq_len"):
        wrapper.beam_search(prompt, 0)


def test_beam_search_restores_training_mode():
    net = TransformerWrapper(
        num_tokens=8, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2)
    ).train()
    AutoregressiveWrapper(net).beam_search(torch.tensor([1, 2]), 3, beams=2)
    assert net.training
