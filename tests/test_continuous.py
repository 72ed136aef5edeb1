"""ContinuousTransformerWrapper shares the token wrapper's path: the same hidden states for the
same embeddings; masks / lens, memory tokens, XL memories, the cache; the continuous loss and
KV-cached generation."""

from __future__ import annotations

import pytest
import torch

from anyformer import (
    ContinuousAutoregressiveWrapper,
    ContinuousTransformerWrapper,
    Decoder,
    Encoder,
    KVCache,
    TransformerWrapper,
)
from anyformer.continuous import ContinuousTransformerWrapper as FromModulePath
from anyformer.xl_autoregressive_wrapper import XLAutoregressiveWrapper


def _pair(**wrapper):
    """A token model and a continuous model with the same stack and positional embedding."""
    torch.manual_seed(0)
    tokens = TransformerWrapper(
        num_tokens=32, max_seq_len=16, attn_layers=Decoder(dim=16, depth=2, heads=2), **wrapper
    ).eval()
    cont = ContinuousTransformerWrapper(
        max_seq_len=16, attn_layers=Decoder(dim=16, depth=2, heads=2), **wrapper
    ).eval()
    cont.load_state_dict(
        {
            k: v
            for k, v in tokens.state_dict().items()
            if not k.startswith(("token_emb", "to_logits"))
        }
    )
    return tokens, cont


@pytest.mark.parametrize("wrapper", [{}, dict(num_memory_tokens=2, post_emb_norm=True)])
def test_same_hidden_states_as_the_token_wrapper_fed_the_same_embeddings(wrapper) -> None:
    tokens, cont = _pair(**wrapper)
    x = torch.randint(0, 32, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    expected = tokens(x, mask=mask, return_embeddings=True)
    got = cont(tokens.token_emb(x), mask=mask, return_embeddings=True)
    torch.testing.assert_close(got, expected)
    _, mems = tokens(x, return_mems=True)
    _, cont_mems = cont(tokens.token_emb(x), return_mems=True)
    torch.testing.assert_close(cont_mems[1], mems[1])


def test_lens_is_a_mask_of_the_first_lens_positions() -> None:
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(
        max_seq_len=8, dim_in=3, dim_out=4, attn_layers=Encoder(dim=16, depth=1, heads=2)
    ).eval()
    x = torch.randn(2, 6, 3)
    lens = torch.tensor([6, 4])
    mask = torch.arange(6) < lens[:, None]
    torch.testing.assert_close(model(x, lens=lens), model(x, mask=mask))
    assert model(x).shape == (2, 6, 4)
    with pytest.raises(ValueError, match="pass either mask or lens"):
        model(x, lens=lens, mask=mask)
    with pytest.raises(ValueError, match=r"with last dimension 3, got shape \(2, 6, 5\)"):
        model(torch.randn(2, 6, 5))


def test_cached_steps_equal_the_full_forward() -> None:
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(
        max_seq_len=16, dim_in=3, attn_layers=Decoder(dim=16, depth=2, heads=2), num_memory_tokens=2
    ).eval()
    x = torch.randn(2, 9, 3)
    full = model(x)
    cache = KVCache()
    steps = [model(x[:, :5], cache=cache)]  # the whole sequence each time, as the token wrapper
    for t in range(5, 9):
        steps.append(model(x[:, : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_the_loss_is_the_mean_squared_error_of_the_next_vector() -> None:
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(
        max_seq_len=8, attn_layers=Decoder(dim=4, depth=1, heads=2)
    )
    wrapper = ContinuousAutoregressiveWrapper(model)
    x = torch.randn(2, 6, 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    out = model(x[:, :-1], mask=mask[:, :-1])
    keep = mask[:, :-1]
    expected = (out - x[:, 1:])[keep].square().mean()
    torch.testing.assert_close(wrapper(x, mask=mask), expected)
    torch.testing.assert_close(wrapper(x, lens=torch.tensor([3, 6])), expected)


def test_generation_with_the_cache_equals_without() -> None:
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(
        max_seq_len=0,
        dim_in=4,
        dim_out=4,
        attn_layers=Decoder(dim=16, depth=2, heads=2, rotary_pos_emb=True, attn_dim_head=16),
    )
    wrapper = ContinuousAutoregressiveWrapper(model)
    start = torch.randn(2, 3, 4)
    cached = wrapper.generate(start, 6, cache_kv=True)
    uncached = wrapper.generate(start, 6, cache_kv=False)
    assert cached.shape == (2, 6, 4) and model.training  # training flag restored
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=0)
    assert wrapper.generate(start[0], 2).shape == (2, 4)  # (t, d) in, (n, d) out


def test_config_round_trip_and_module_paths() -> None:
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(
        max_seq_len=8,
        dim_in=3,
        dim_out=2,
        num_memory_tokens=1,
        max_mem_len=4,
        scaled_sinu_pos_emb=True,
        attn_layers=Decoder(dim=16, depth=1, heads=2, use_rmsnorm=True, shift_tokens=1),
    )
    again = ContinuousTransformerWrapper.from_config(model.config_dict())
    assert again.config_dict() == model.config_dict()
    assert list(again.state_dict()) == list(model.state_dict())
    assert FromModulePath is ContinuousTransformerWrapper
    assert XLAutoregressiveWrapper.__module__ == "anyformer.generation.xl_autoregressive"
    with pytest.raises(TypeError, match="Did you mean 'dim_out'"):
        ContinuousTransformerWrapper(max_seq_len=8, dim_outt=3, attn_layers=Decoder(dim=8, depth=1))


def test_saved_folders_load_back_with_their_wrappers(tmp_path) -> None:
    from anyformer import XLAutoregressiveWrapper as XL
    from anyformer import load_pretrained, save_pretrained

    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(
        max_seq_len=4,
        dim_in=3,
        attn_layers=Decoder(dim=8, depth=1, use_rmsnorm=True, shift_tokens=1),
    ).eval()
    save_pretrained(ContinuousAutoregressiveWrapper(model), tmp_path / "cont")
    loaded = load_pretrained(tmp_path / "cont")
    assert isinstance(loaded, ContinuousAutoregressiveWrapper)
    x = torch.randn(1, 3, 3)
    assert torch.equal(loaded.net(x), model(x))
    xl = TransformerWrapper(
        num_tokens=8,
        max_seq_len=4,
        max_mem_len=4,
        num_memory_tokens=2,
        attn_layers=Decoder(dim=8, depth=1),
    )
    save_pretrained(XL(xl), tmp_path / "xl")
    back = load_pretrained(tmp_path / "xl")
    assert isinstance(back, XL) and back.net.config == xl.config


@pytest.mark.parametrize("bad", [16, -1])
def test_pos_outside_the_position_table_is_a_value_error(bad):
    """The continuous wrapper checks pos's range as the token wrapper does (it did not: an
    out-of-range position reached the embedding table as an IndexError)."""
    _, cont = _pair()
    x = torch.randn(1, 3, 16)
    pos = torch.tensor([0, 1, bad])
    with pytest.raises(ValueError, match=rf"pos holds position {bad}, outside \[0, 16\)"):
        cont(x, pos=pos)
    with pytest.raises(ValueError, match=r"pos must be a torch.long tensor of shape \(3,\)"):
        cont(x, pos=torch.tensor([0.0, 1.0, 2.0]))
    assert cont(x, pos=torch.tensor([0, 1, 15])).shape == (1, 3, 16)  # the last row is valid
