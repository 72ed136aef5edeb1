"""anyformer.convert.x_transformers: checkpoints trained in x-transformers 1.28.2, strict errors.

The per-configuration equality (logits, loss, gradients, decoding, round trip) is the oracle in
tests/oracle/; this file holds the acceptance test (train in 1.28.2, save, load here) and the
converter's error behaviour.
"""

from __future__ import annotations

import re

import pytest
import torch
import x_transformers as xt

import anyformer as af
from anyformer.convert import load_x_transformers_state_dict, to_x_transformers_state_dict
from anyformer.data import get_batch, load_splits


def _lm(lib, **stack):
    return lib.TransformerWrapper(
        num_tokens=256,
        max_seq_len=32,
        attn_layers=lib.Decoder(dim=32, depth=2, heads=2, attn_dim_head=16, **stack),
    )


def test_checkpoint_trained_in_x_transformers_gives_the_same_validation_loss(tmp_path) -> None:
    train, val = load_splits()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    theirs = xt.AutoregressiveWrapper(_lm(xt, ff_glu=True, attn_flash=True))
    opt = torch.optim.AdamW(theirs.parameters(), lr=3e-3)
    val_batches = [get_batch(val, 8, 32, generator=gen) for _ in range(2)]

    def val_loss(model) -> float:
        model.eval()
        with torch.no_grad():
            return sum(model(b).item() for b in val_batches) / len(val_batches)

    before = val_loss(theirs)
    theirs.train()
    for _ in range(20):
        loss = theirs(get_batch(train, 8, 32, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = val_loss(theirs)
    assert after < before - 0.5  # 20 steps did train it (log(256) = 5.5 at the start)

    path = tmp_path / "x_transformers.pt"
    torch.save(theirs.net.state_dict(), path)
    ours = _lm(af, ff_glu=True, attn_flash=True)
    load_x_transformers_state_dict(ours, torch.load(path, weights_only=True))
    assert abs(val_loss(af.AutoregressiveWrapper(ours)) - after) <= 1e-5


def test_unmatched_keys_and_shapes_are_listed_and_nothing_is_loaded() -> None:
    torch.manual_seed(0)
    state = _lm(xt).state_dict()
    state["attn_layers.layers.0.1.to_q.weight"] = torch.zeros(7, 32)
    del state["attn_layers.layers.1.1.ff.2.bias"]
    state["attn_layers.layers.9.1.to_q.weight"] = torch.zeros(32, 32)
    ours = _lm(af)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_x_transformers_state_dict(ours, state)
    message = str(err.value)
    assert "keys of state_dict this TransformerWrapper has no place for (1):" in message
    assert "attn_layers.layers.9.1.to_q.weight: (32, 32)" in message
    assert "keys this model needs that state_dict lacks (1):" in message
    assert "attn_layers.layers.1.1.ff.2.bias: (32,)" in message
    assert "attn_layers.layers.0.1.to_q.weight: (7, 32) in state_dict, (32, 32) expected" in message
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())


def test_wrong_argument_types() -> None:
    with pytest.raises(TypeError, match="state_dict must be a mapping of str to Tensor, got list"):
        load_x_transformers_state_dict(_lm(af), [])
    with pytest.raises(TypeError, match=re.escape("got 'a': int")):
        load_x_transformers_state_dict(_lm(af), {"a": 1})
    with pytest.raises(TypeError, match=r"model must be an anyformer nn\.Module, got dict"):
        to_x_transformers_state_dict({})


def test_tied_keys_must_agree() -> None:
    """XTransformer(tie_token_emb=True) shares one embedding; a checkpoint whose two copies
    differ cannot be loaded into it."""
    keywords = dict(
        dim=16,
        tie_token_emb=True,
        enc_num_tokens=32,
        enc_depth=1,
        enc_max_seq_len=8,
        dec_num_tokens=32,
        dec_depth=1,
        dec_max_seq_len=8,
    )
    state = xt.XTransformer(**{**keywords, "tie_token_emb": False}).state_dict()
    with pytest.raises(ValueError, match="are one tied tensor in this model"):
        load_x_transformers_state_dict(af.XTransformer(**keywords), state)


def test_xtransformer_encoder_head_is_dropped_and_written_as_zeros() -> None:
    keywords = dict(
        dim=16,
        enc_num_tokens=40,
        enc_depth=1,
        enc_max_seq_len=8,
        dec_num_tokens=32,
        dec_depth=1,
        dec_max_seq_len=8,
    )
    torch.manual_seed(0)
    theirs = xt.XTransformer(**keywords)
    assert theirs.state_dict()["encoder.to_logits.weight"].shape == (40, 16)
    ours = af.XTransformer(**keywords)
    load_x_transformers_state_dict(ours, theirs.state_dict())
    assert not any("encoder.to_logits" in k for k in ours.state_dict())
    written = to_x_transformers_state_dict(ours)
    assert torch.equal(written["encoder.to_logits.weight"], torch.zeros(40, 16))
    assert set(written) == set(theirs.state_dict())


def test_no_final_norm_follows_the_2x_layout() -> None:
    """pre_norm_has_final_norm=False: no final norm is written (anyformer has none);
    1.28.2's checkpoint carries one that it applied, so it is refused with the remedy."""
    ours = _lm(af, pre_norm_has_final_norm=False)
    written = to_x_transformers_state_dict(ours)
    missing = set(_lm(xt, pre_norm_has_final_norm=False).state_dict()) - set(written)
    assert missing == {"attn_layers.final_norm.weight"}
    with pytest.raises(ValueError, match="build the anyformer model with pre_norm_has_final_norm"):
        load_x_transformers_state_dict(ours, _lm(xt, pre_norm_has_final_norm=False).state_dict())
    load_x_transformers_state_dict(_lm(af), _lm(xt, pre_norm_has_final_norm=False).state_dict())


def test_checkpoints_with_2x_norm_names_are_refused_with_the_reason() -> None:
    """x-transformers 2.0 to 2.3 (read from their sources) store LayerNorm gains as `gamma`,
    by default as gain - 1 (norm_add_unit_offset=True): loading them as weights would be wrong."""
    torch.manual_seed(0)
    state = {
        (k[: -len(".weight")] + ".gamma" if v.ndim == 1 and k.endswith(".weight") else k): v
        for k, v in _lm(xt).state_dict().items()
    }
    assert "attn_layers.final_norm.gamma" in state
    with pytest.raises(ValueError, match=r"keys ending in '\.gamma' are LayerNorm gains"):
        load_x_transformers_state_dict(_lm(af), state)


@pytest.mark.parametrize(
    "dtype", [torch.int64, torch.bool, torch.float16], ids=["int64", "bool", "float16"]
)
def test_tensors_of_another_dtype_are_refused_not_cast(dtype) -> None:
    torch.manual_seed(0)
    state = _lm(xt).state_dict()
    key = "attn_layers.layers.0.1.to_q.weight"
    state[key] = torch.ones(32, 32, dtype=dtype)
    ours = _lm(af)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_x_transformers_state_dict(ours, state)
    assert f"{key}: {dtype} in state_dict, the model holds torch.float32" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())


def test_a_fused_link_with_one_map_is_refused():
    # a map one way without the way back: it failed only once a checkpoint was converted
    from anyformer.convert.x_transformers import Fused

    with pytest.raises(ValueError, match=r"Fused\('to_qkv.weight'\) needs both maps or neither"):
        Fused("to_qkv.weight", ("q", "k"), (2, 2), to_theirs=lambda t: t)
    assert Fused("w", ("a", "b"), (1, 1)).to_ours is None
