"""Token shift: channel groups taken from earlier (or later) positions, written out by hand;
cached decoding equals the full forward (x-transformers 1.28.2 gets this wrong)."""

from __future__ import annotations

import pytest
import torch

from anyformer import Decoder, Encoder, KVCache, TransformerWrapper
from anyformer.nn.token_shift import ShiftTokens


def _by_hand(x: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    """Loop version: group g of size d // len(shifts) at row i is row i - shifts[g] (or 0)."""
    _, n, d = x.shape
    size = d // len(shifts)
    out = x.clone()
    for g, amount in enumerate(shifts):
        cols = slice(g * size, (g + 1) * size)
        for i in range(n):
            src = i - amount
            out[:, i, cols] = x[:, src, cols] if 0 <= src < n else 0.0
    return out


@pytest.mark.parametrize("shifts", [(0, 1), (0, 1, 2), (-2, -1, 0, 1, 2), (0, 5)])
def test_shift_matches_the_written_out_loop(shifts: tuple[int, ...]) -> None:
    x = torch.randn(2, 4, 11, dtype=torch.float64)  # 11 % len(shifts) channels stay unshifted
    torch.testing.assert_close(ShiftTokens(shifts, use_mask=False)(x), _by_hand(x, shifts))


def test_attention_layers_zero_padded_rows_before_shifting() -> None:
    x = torch.randn(1, 4, 4, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True]])
    masked = x.clone()
    masked[0, 1] = 0.0
    shift = ShiftTokens((0, 1), use_mask=True)
    torch.testing.assert_close(shift(x, mask), _by_hand(masked, (0, 1)))
    torch.testing.assert_close(ShiftTokens((0, 1), use_mask=False)(x, mask), _by_hand(x, (0, 1)))


def test_causal_stacks_shift_from_the_past_only_bidirectional_from_both_sides() -> None:
    causal = Decoder(dim=8, depth=1, heads=2, shift_tokens=2)
    both = Encoder(dim=8, depth=1, heads=2, shift_tokens=(0, 1))
    assert [b.token_shift.shifts for b in causal.layers] == [(0, 1, 2)] * 2
    assert both.layers[0].token_shift is None and both.layers[1].token_shift.shifts == (-1, 0, 1)
    # a causal shift keeps causality: position i never sees a later input
    torch.manual_seed(0)
    x = torch.randn(1, 6, 8)
    y = x.clone()
    y[0, 4:] += 1.0
    torch.testing.assert_close(causal.eval()(x)[0, :4], causal(y)[0, :4])


@pytest.mark.parametrize("shift_tokens", [1, (2, 0, 0, 3)])
def test_cached_decoding_equals_the_full_forward(shift_tokens) -> None:
    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=32,
        max_seq_len=16,
        attn_layers=Decoder(dim=16, depth=2, heads=2, shift_tokens=shift_tokens),
    ).eval()
    x = torch.randint(0, 32, (2, 10))
    full = model(x)
    cache = KVCache()
    steps = [model(x[:, :3], cache=cache, input_not_include_cache=True)]
    for t in range(3, 10):
        steps.append(model(x[:, t : t + 1], cache=cache, input_not_include_cache=True))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    # every shifting block has a cache slot of its own: attention layers two, ffs one
    uses = sum(2 if b.layer_type == "a" else 1 for b in model.attn_layers.layers if b.token_shift)
    assert len(cache.layers) == uses + sum(
        b.layer_type == "a" and b.token_shift is None for b in model.attn_layers.layers
    )


def test_cached_decoding_with_padding_matches() -> None:
    torch.manual_seed(1)
    model = TransformerWrapper(
        num_tokens=32, max_seq_len=0, attn_layers=Decoder(dim=16, depth=1, heads=2, shift_tokens=1)
    ).eval()
    x = torch.randint(0, 32, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 2] = False  # a hidden key in the middle of row 0
    full = model(x, mask=mask)
    cache = KVCache()
    steps = [model(x[:, :4], mask=mask[:, :4], cache=cache, input_not_include_cache=True)]
    for t in range(4, 8):
        steps.append(
            model(
                x[:, t : t + 1], mask=mask[:, t : t + 1], cache=cache, input_not_include_cache=True
            )
        )
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
