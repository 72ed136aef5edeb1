"""Streaming: the tokens of generate, handed out one step at a time, computed only on demand."""

from __future__ import annotations

import pytest
import torch
from gen_models import Biased, decoder_net, greedy_by_hand, prompt_list

from anyformer import AutoregressiveWrapper
from anyformer.generation import decode_bytes


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def counted(seed=0, **kwargs):
    """A model that counts its forward calls (a zero bias leaves its logits unchanged)."""
    net = decoder_net(seed=seed, **kwargs)
    return Biased(net, torch.zeros(net.num_tokens))


@pytest.mark.parametrize("cache_kv", [True, False])
def test_stream_yields_greedy_tokens_one_forward_per_step(cache_kv):
    net = counted()
    wrapper = AutoregressiveWrapper(net)
    prompts = prompt_list((3, 6), seed=1)
    stream = wrapper.stream(prompts, 20, temperature=0, cache_kv=cache_kv)
    assert net.calls == 0  # nothing runs before the first token is asked for
    tokens = []
    for step, token in enumerate(stream, start=1):
        assert token.shape == (2,)
        assert net.calls == step  # the prompt pass, then one call per fed token
        tokens.append(token)
    out = torch.stack(tokens, dim=1)
    assert out.shape == (2, 20)
    assert torch.equal(out, wrapper.generate(prompts, 20, temperature=0))
    assert torch.equal(out[1], greedy_by_hand(net.net, prompts[1], 20))


def test_stream_sampling_equals_generate_with_the_same_generator():
    wrapper = AutoregressiveWrapper(decoder_net(seed=2))
    prompts = prompt_list((4, 2, 5), seed=3)
    kw = dict(temperature=0.9, filter_logits_fn="top_p", filter_kwargs=dict(thres=0.9))
    streamed = list(wrapper.stream(prompts, 16, generator=torch.Generator().manual_seed(7), **kw))
    generated = wrapper.generate(prompts, 16, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(torch.stack(streamed, dim=1), generated)


def test_stream_stops_at_the_step_every_row_has_emitted_eos():
    wrapper = AutoregressiveWrapper(decoder_net(seed=4), pad_value=0)
    prompts = prompt_list((3, 5), seed=5)
    ref = wrapper.generate(prompts, 30, temperature=0)
    eos = next(t for t in ref[0].tolist() if t in ref[1].tolist() and t != 0)
    last = max(row.tolist().index(eos) for row in ref)
    streamed = torch.stack(list(wrapper.stream(prompts, 30, temperature=0, eos_token=eos)), dim=1)
    assert streamed.shape == (2, last + 1)
    assert torch.equal(streamed, wrapper.generate(prompts, 30, temperature=0, eos_token=eos))
    for row in range(2):
        first = ref[row].tolist().index(eos)
        assert torch.equal(streamed[row, : first + 1], ref[row, : first + 1])
        assert bool((streamed[row, first + 1 :] == 0).all())


def test_stream_one_dimensional_prompt_yields_scalars_and_speculative_streams():
    target = decoder_net(seed=6)
    wrapper = AutoregressiveWrapper(target)
    prompt = prompt_list((4,), seed=7)[0]
    draft = decoder_net(seed=8, depth=1)
    streamed = list(wrapper.stream(prompt, 24, temperature=0, draft_model=draft, draft_tokens=3))
    assert all(t.shape == () for t in streamed)
    assert torch.stack(streamed).tolist() == greedy_by_hand(target, prompt, 24).tolist()


def test_stream_restores_training_mode_when_closed_early():
    net = decoder_net(seed=9).train()
    stream = AutoregressiveWrapper(net).stream(prompt_list((3,), seed=10), 10, temperature=0)
    next(stream)
    assert not net.training  # generation runs in eval mode
    stream.close()
    assert net.training


def test_decode_bytes_holds_back_partial_utf8_characters():
    text = "héllo ✓ ok"
    data = list(text.encode())
    pieces = list(decode_bytes(torch.tensor([b, 0]) for b in data))  # row 0 of a batch of 2
    assert "".join(pieces) == text
    assert pieces == list(text)  # one piece per character, never half a character
    assert list(decode_bytes([0xE2, 0x9C])) == ["\ufffd"]  # a cut-off character at the end
    with pytest.raises(ValueError, match="byte"):
        list(decode_bytes([300]))
