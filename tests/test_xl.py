"""Transformer-XL memories: two segments with mems equal one pass where the memory covers the
past (rotary, ALiBi, T5, with mem_masks); return_mems, max_mem_len, shift_mem_down; the XL
wrapper trains segment by segment and generates past max_seq_len."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anyformer import Decoder, KVCache, TransformerWrapper, XLAutoregressiveWrapper


def _model(max_seq_len=0, max_mem_len=16, depth=2, shift_mem_down=0, **stack):
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=32,
        max_seq_len=max_seq_len,
        max_mem_len=max_mem_len,
        shift_mem_down=shift_mem_down,
        use_abs_pos_emb=False,
        attn_layers=Decoder(dim=16, depth=depth, heads=2, attn_dim_head=16, **stack),
    ).eval()


SCHEMES = [dict(rotary_pos_emb=True), dict(alibi_pos_bias=True), dict(rel_pos_bias=True)]


@pytest.mark.parametrize("scheme", SCHEMES, ids=["rotary", "alibi", "t5"])
def test_two_segments_with_memories_equal_one_pass(scheme) -> None:
    model = _model(**scheme)
    x = torch.randint(0, 32, (2, 11))
    full = model(x)
    first, mems = model(x[:, :6], return_mems=True)
    assert len(mems) == 2 and mems[0].shape == (2, 6, 16) and not mems[0].requires_grad
    second = model(x[:, 6:], mems=mems)
    torch.testing.assert_close(torch.cat((first, second), dim=1), full, atol=1e-5, rtol=0)


def test_a_masked_memory_row_is_a_masked_key_of_the_one_pass() -> None:
    model = _model(rotary_pos_emb=True)
    x = torch.randint(0, 32, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 2] = False
    full = model(x, mask=mask)
    _, mems = model(x[:, :5], mask=mask[:, :5], return_mems=True)
    second = model(x[:, 5:], mems=mems, mem_masks=[mask[:, :5]] * len(mems))
    torch.testing.assert_close(second, full[:, 5:], atol=1e-5, rtol=0)
    assert (model(x[:, 5:], mems=mems) - full[:, 5:]).abs().max() > 1e-3  # the mask matters


def test_return_mems_keeps_the_last_max_mem_len_rows() -> None:
    model = _model(max_mem_len=7)
    x = torch.randint(0, 32, (1, 12))
    _, m1 = model(x[:, :4], return_mems=True)
    _, inter = model(x[:, :4], return_intermediates=True)
    torch.testing.assert_close(m1[0], inter.hiddens[0])  # 4 rows < 7: all of them
    _, m2 = model(x[:, 4:10], mems=m1, return_mems=True)
    _, inter2 = model(x[:, 4:10], mems=m1, return_intermediates=True)
    assert m2[1].shape == (1, 7, 16)
    torch.testing.assert_close(m2[1], torch.cat((m1[1], inter2.hiddens[1]), dim=1)[:, -7:])
    _, both = model(x[:, 4:10], mems=m1, return_mems=True, return_intermediates=True)
    torch.testing.assert_close(both.mems[0], m2[0])


def test_shift_mem_down_hands_each_layer_the_memory_of_the_layer_above() -> None:
    shifted = _model(depth=3, shift_mem_down=1, rotary_pos_emb=True)
    plain = _model(depth=3, rotary_pos_emb=True)
    x = torch.randint(0, 32, (2, 8))
    _, mems = plain(x[:, :4], return_mems=True)
    rotated = [mems[1], mems[2], mems[0]]
    torch.testing.assert_close(shifted(x[:, 4:], mems=mems), plain(x[:, 4:], mems=rotated))


def test_memories_then_cached_decoding_equal_the_uncached_segment() -> None:
    model = _model(rotary_pos_emb=True)
    x = torch.randint(0, 32, (2, 10))
    _, mems = model(x[:, :4], return_mems=True)
    expected = model(x[:, 4:], mems=mems)
    cache = KVCache()
    steps = [model(x[:, 4:6], mems=mems, cache=cache, input_not_include_cache=True)]
    for t in range(6, 10):
        steps.append(model(x[:, t : t + 1], cache=cache, input_not_include_cache=True))
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=0)


def test_xl_wrapper_trains_on_four_segments_and_generates_past_max_seq_len() -> None:
    model = _model(max_seq_len=5, max_mem_len=10, rotary_pos_emb=True).train()
    wrapper = XLAutoregressiveWrapper(model)
    x = torch.randint(0, 32, (2, 4 * 5 + 1))
    loss = wrapper(x)
    mems, parts = None, []  # the same loss written out: segment CE weighted by length
    for chunk, labels in zip(x[:, :-1].split(5, dim=1), x[:, 1:].split(5, dim=1)):
        logits, mems = model(chunk, mems=mems, return_mems=True)
        parts.append(F.cross_entropy(logits.transpose(1, 2), labels) * 5 / 20)
    torch.testing.assert_close(loss, sum(parts))
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        optim.zero_grad()
        wrapper(x).backward()
        optim.step()
    assert wrapper(x).item() < loss.item() - 0.5
    out = wrapper.generate(x[:, :3], 12, temperature=0.0)
    assert out.shape == (2, 12) and out.dtype == torch.long
    assert torch.equal(out, wrapper.generate(x[:, :3], 12, temperature=0.0, cache_kv=False))


def test_memory_argument_errors() -> None:
    model = _model()
    x = torch.randint(0, 32, (2, 4))
    _, mems = model(x, return_mems=True)
    with pytest.raises(ValueError, match=r"one \(batch, mem_len, 16\) tensor per self-attention"):
        model(x, mems=mems[:1])
    masks = [torch.ones(2, 4, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool)]
    with pytest.raises(ValueError, match="mem_masks must be the same for every layer"):
        model(x, mems=mems, mem_masks=masks)
    with pytest.raises(ValueError, match="mem_masks was given without mems"):
        model(x, mem_masks=torch.ones(2, 4, dtype=torch.bool))
    cache = KVCache()
    model(x, cache=cache, input_not_include_cache=True)
    with pytest.raises(ValueError, match="return_mems needs the hidden states of the whole"):
        model(x[:, :1], cache=cache, input_not_include_cache=True, return_mems=True)
    with pytest.raises(ValueError, match="mems can only be given with an empty cache"):
        model(x[:, :1], mems=mems, cache=cache, input_not_include_cache=True)
    with pytest.raises(ValueError, match="the net needs max_seq_len >= 1"):
        XLAutoregressiveWrapper(model)
