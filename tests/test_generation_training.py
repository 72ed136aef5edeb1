"""The wrapper's training side: forgetful causal masking, lens, prepend_embeds, return_outputs."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from gen_models import decoder_net, x_transformers_twin

from anyformer import AutoregressiveWrapper
from anyformer.generation import forgetful_key_mask

V = 32
TOL = dict(atol=1e-5, rtol=1e-5)


def tokens(b, n, seed):
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- mask_prob


@pytest.mark.parametrize("mask_prob", [0.15, 0.5])
def test_mask_prob_loss_equals_x_transformers_1_28_2_for_a_seed(mask_prob):
    net = decoder_net(seed=0).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from x_transformers import AutoregressiveWrapper as XAutoregressiveWrapper
    twin = XAutoregressiveWrapper(x_transformers_twin(net), mask_prob=mask_prob).train()
    ours = AutoregressiveWrapper(net, mask_prob=mask_prob).train()
    x = tokens(3, 17, 1)
    torch.manual_seed(5)
    loss = ours(x)
    torch.manual_seed(5)
    want = twin(x)
    torch.testing.assert_close(loss, want, **TOL)
    torch.manual_seed(6)
    assert not torch.allclose(ours(x), loss)  # another seed hides other keys
    loss.backward()  # and it trains
    assert net.token_emb.emb.weight.grad is not None


def test_mask_prob_hides_keys_from_attention_only():
    net = decoder_net(seed=1).train()
    wrapper = AutoregressiveWrapper(net, mask_prob=0.3).train()
    x = tokens(2, 11, 2)
    torch.manual_seed(3)
    loss = wrapper(x)
    torch.manual_seed(3)
    keep = forgetful_key_mask(2, 10, 0.3, x.device)
    # by hand: the net sees the key mask, every target is still scored
    logits = net(x[:, :-1], mask=keep)
    torch.testing.assert_close(loss, F.cross_entropy(logits.transpose(1, 2), x[:, 1:]), **TOL)
    assert int((~keep).sum(dim=1).unique()) == int(11 * 0.3)  # 3 keys hidden per row
    assert bool(keep[:, 0].all())  # the first token is never hidden


def test_forgetful_mask_pinned_for_a_seed():
    torch.manual_seed(0)
    noise = torch.randn(2, 8)
    torch.manual_seed(0)
    keep = forgetful_key_mask(2, 8, 0.4, torch.device("cpu"))
    # int(9 * 0.4) = 3 hidden per row: the 3 largest draws outside column 0
    for row in range(2):
        ranked = sorted(range(1, 8), key=lambda j: -float(noise[row, j]))
        assert sorted(j for j in range(8) if not keep[row, j]) == sorted(ranked[:3])
    # capped so that the first key stays: at most n - 1 hidden
    assert int((~forgetful_key_mask(1, 4, 0.99, torch.device("cpu"))).sum()) == 3


def test_eval_loss_is_unmasked():
    net = decoder_net(seed=2)
    wrapper = AutoregressiveWrapper(net, mask_prob=0.5).eval()
    x = tokens(2, 9, 4)
    expected = F.cross_entropy(net(x[:, :-1]).transpose(1, 2), x[:, 1:])
    torch.testing.assert_close(wrapper(x), expected, **TOL)


def test_add_attn_z_loss_equals_x_transformers_1_28_2():
    net = decoder_net(seed=7).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from x_transformers import AutoregressiveWrapper as XAutoregressiveWrapper
    twin = XAutoregressiveWrapper(x_transformers_twin(net), add_attn_z_loss=True).train()
    x = tokens(2, 12, 12)
    loss = AutoregressiveWrapper(net, add_attn_z_loss=True)(x).detach()
    torch.testing.assert_close(loss, twin(x), **TOL)
    assert loss.item() > AutoregressiveWrapper(net)(x).item()  # the z-loss is positive


# --------------------------------------------------------------------------- lens, prepend, outputs


def test_lens_ignores_padding_positions():
    net = decoder_net(seed=3)
    wrapper = AutoregressiveWrapper(net, ignore_index=-1)
    x = tokens(3, 10, 5)
    lens = torch.tensor([10, 4, 7])
    loss = wrapper(x, lens=lens)
    logits = net(x[:, :-1])
    nll = -logits.log_softmax(-1).gather(-1, x[:, 1:, None])[..., 0]
    scored = torch.arange(1, 10)[None] < lens[:, None]  # target j + 1 is real
    torch.testing.assert_close(loss, nll[scored].mean(), **TOL)
    assert int(scored.sum()) == 9 + 3 + 6
    # the same as writing ignore_index into the padding
    padded = x.clone()
    padded[torch.arange(10)[None] >= lens[:, None]] = -1
    torch.testing.assert_close(loss, wrapper(padded), **TOL)


def test_lens_errors():
    wrapper = AutoregressiveWrapper(decoder_net())
    x = tokens(2, 6, 6)
    with pytest.raises(ValueError, match="lens"):
        wrapper(x, lens=torch.tensor([6, 7]))
    with pytest.raises(ValueError, match="lens"):
        wrapper(x, lens=torch.tensor([3]))


def test_prepend_embeds_loss_scores_the_tokens_only():
    net = decoder_net(seed=4)
    wrapper = AutoregressiveWrapper(net)
    x = tokens(2, 8, 7)
    prefix = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(8))
    loss, (logits, inter) = wrapper(x, prepend_embeds=prefix, return_outputs=True)
    by_hand = net(x[:, :-1], prepend_embeds=prefix)[:, 3:]
    assert logits.shape == (2, 7, V)
    torch.testing.assert_close(logits, by_hand, **TOL)
    torch.testing.assert_close(loss, F.cross_entropy(by_hand.transpose(1, 2), x[:, 1:]), **TOL)
    assert inter.cache_length == 3 + 7


def test_generate_with_prepend_embeds_equals_recomputation():
    net = decoder_net(seed=5)
    wrapper = AutoregressiveWrapper(net)
    prefix = torch.randn(1, 2, 32, generator=torch.Generator().manual_seed(9))
    prompt = tokens(1, 4, 10)
    out = wrapper.generate(prompt, 12, temperature=0, prepend_embeds=prefix)
    seq = prompt
    for _ in range(12):
        nxt = net(seq, prepend_embeds=prefix)[:, -1].argmax(-1)
        seq = torch.cat((seq, nxt[:, None]), dim=1)
    assert torch.equal(out, seq[:, 4:])
    beams = wrapper.beam_search(prompt, 12, beams=1, prepend_embeds=prefix)
    assert torch.equal(beams, out)


def test_generate_return_intermediates_gives_the_cache():
    net = decoder_net(seed=6)
    prompt = tokens(2, 5, 11)
    with torch.no_grad():
        out, inter = AutoregressiveWrapper(net).generate(
            prompt, 10, temperature=0, return_intermediates=True
        )
        assert inter.cache.length == 5 + 9  # every token but the last was fed
        nxt = net(out[:, -1:], cache=inter.cache, input_not_include_cache=True)
        full = net(torch.cat((prompt, out), dim=1))[:, -1]
    torch.testing.assert_close(nxt[:, -1], full, **TOL)
    _, uncached = AutoregressiveWrapper(net).generate(
        prompt, 3, cache_kv=False, return_intermediates=True
    )
    assert uncached.cache is None


# --------------------------------------------------------------------------- options


def test_wrapper_option_errors():
    net = decoder_net()
    with pytest.raises(ValueError, match="mask_prob"):
        AutoregressiveWrapper(net, mask_prob=1.0)
    with pytest.raises(TypeError, match="mask_prob"):
        AutoregressiveWrapper(net, mask_prob="0.1")
    with pytest.raises(TypeError, match="Did you mean 'mask_prob'"):
        AutoregressiveWrapper(net, mask_probs=0.1)
