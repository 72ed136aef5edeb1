"""Non-finite logits stop every decoding mode with a ValueError naming the step (not garbage)."""

from __future__ import annotations

import pytest
import torch

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper, XLAutoregressiveWrapper

V = 16


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def net(seed=0, **kwargs):
    torch.manual_seed(seed)
    stack = Decoder(dim=16, depth=1, heads=2)
    return TransformerWrapper(num_tokens=V, max_seq_len=32, attn_layers=stack, **kwargs).eval()


def spoil(model, call, value=float("nan"), row=0, col=-1):
    """From the `call`-th head call on (0: the prompt), set one row of logits to `value`
    (at column `col` of that call's positions)."""
    calls = []

    def hook(module, args, out):
        calls.append(1)
        if len(calls) - 1 >= call:
            out = out.clone()
            out[row, col] = value
        return out

    return model.to_logits.register_forward_hook(hook)


PROMPT = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cache_kv", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_logits_raise_naming_the_step(cache_kv, temperature):
    model = net()
    spoil(model, call=3, row=1)
    with pytest.raises(
        ValueError,
        match=r"^generate: the logits at step 3 \(position 8, prompt 1\) contain NaN;",
    ):
        AutoregressiveWrapper(model).generate(PROMPT, 6, temperature=temperature, cache_kv=cache_kv)


def test_position_follows_each_rows_prompt_length():
    model = net()
    spoil(model, call=2, row=0)
    prompts = [PROMPT[0, :3], PROMPT[1]]  # row 0's prompt holds 3 tokens
    with pytest.raises(ValueError, match=r"at step 2 \(position 5, prompt 0\) contain NaN"):
        AutoregressiveWrapper(model).generate(prompts, 4, temperature=0.0)


@pytest.mark.parametrize(
    ("value", "what"),
    [(float("inf"), r"\+inf"), (float("-inf"), r"no finite value \(every token is -inf\)")],
)
def test_infinite_logits_raise(value, what):
    model = net()
    hook = spoil(model, call=1, value=value)
    with pytest.raises(ValueError, match=rf"at step 1 \(position 6, prompt 0\) contain {what}"):
        AutoregressiveWrapper(model).generate(PROMPT, 3, temperature=0.0)
    hook.remove()


def test_masked_tokens_are_allowed_and_never_picked():
    # -inf on some tokens is a mask, not an error: sampling avoids them
    model = net()

    def hook(module, args, out):
        out = out.clone()
        out[..., : V // 2] = float("-inf")
        return out

    model.to_logits.register_forward_hook(hook)
    gen = torch.Generator().manual_seed(0)
    out = AutoregressiveWrapper(model).generate(PROMPT, 12, generator=gen)
    assert out.shape == (2, 12)
    assert int(out.min()) >= V // 2


def test_stream_raises_before_yielding_the_bad_step():
    model = net()
    spoil(model, call=2)
    got = []
    with pytest.raises(ValueError, match=r"^stream: the logits at step 2 "):
        for token in AutoregressiveWrapper(model).stream(PROMPT, 6, temperature=0.0):
            got.append(token)
    assert len(got) == 2


@pytest.mark.parametrize("stochastic", [False, True])
def test_beam_search_raises_naming_the_prompt(stochastic):
    model = net()
    spoil(model, call=2, row=1 * 3)  # beam rows: 3 per prompt, row 3 is prompt 1's first beam
    with pytest.raises(
        ValueError, match=r"^beam_search: the logits at step 2 \(position 7, prompt 1\)"
    ):
        AutoregressiveWrapper(model).beam_search(PROMPT, 4, beams=3, stochastic=stochastic)


def test_speculative_target_nan_names_the_verified_step():
    target, draft = net(0), net(1)
    # call 0: the prompt; call 1: the first verification of (last token + 3 drafts): 4 positions
    spoil(target, call=1, col=2)
    with pytest.raises(ValueError, match=r"^generate: the logits at step 3 \(position 8"):
        AutoregressiveWrapper(target).generate(
            PROMPT, 8, temperature=0.0, draft_model=draft, draft_tokens=3
        )


def test_speculative_draft_nan_is_named():
    target, draft = net(0), net(1)
    spoil(draft, call=1)
    with pytest.raises(ValueError, match=r"^generate: the draft_model's logits at step 1 "):
        AutoregressiveWrapper(target).generate(
            PROMPT, 8, temperature=1.0, draft_model=draft, draft_tokens=3
        )


def test_contrastive_nan_amateur_raises():
    expert, amateur = net(0), net(1)
    spoil(amateur, call=1, value=float("nan"))
    with pytest.raises(ValueError, match=r"^generate: the logits at step 1 \(position 6"):
        AutoregressiveWrapper(expert).generate(PROMPT, 4, temperature=0.0, amateur_model=amateur)


def test_xl_generate_raises():
    model = net(max_mem_len=8)
    spoil(model, call=2)
    with pytest.raises(ValueError, match=r"^generate: the logits at step 2 \(position 7"):
        XLAutoregressiveWrapper(model).generate(PROMPT, 5, temperature=0.0)


def test_guard_reads_the_device_once_every_n_steps():
    from anyformer.generation.finite import LogitGuard

    guard = LogitGuard("generate", prompt_width=4, every=3)
    good, bad = torch.zeros(2, V), torch.zeros(2, V)
    bad[1, 3] = float("nan")
    guard.observe(good, 0)
    guard.observe(bad, 1)  # recorded, not yet read
    with pytest.raises(ValueError, match=r"at step 1 \(position 5, prompt 1\) contain NaN"):
        guard.observe(good, 2)  # the third observation reads all three
    guard.observe(bad, 3)
    with pytest.raises(ValueError, match=r"at step 3 "):
        guard.verify()
    guard.verify()  # nothing pending: no error
