"""BERT: a tiny Hugging Face BertModel with random weights, converted, gives the same last hidden
state (token types, padding mask); a folder written by transformers loads without it."""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import TOL, max_diff, padded_batch, same_parameters
from hf_models import tiny_bert as tiny

from anyformer import Encoder, TransformerWrapper
from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir


def _token_types(ids, seed=2):
    return torch.randint(0, 2, ids.shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "overrides",
    [{}, {"hidden_act": "gelu_new", "layer_norm_eps": 1e-5, "intermediate_size": 40}],
    ids=["default", "tanh-gelu-eps-width"],
)
def test_last_hidden_state_matches_on_a_padded_batch(overrides):
    hf = tiny(**overrides)
    model = from_hf(hf)
    assert isinstance(model, TransformerWrapper)
    ids, mask = padded_batch()
    types = _token_types(ids)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long(), token_type_ids=types).last_hidden_state
        got = model(ids, mask=mask, embed_ids={"token_type": types})
    assert got.shape == (3, 12, 32)
    assert max_diff(got, expected, mask) < TOL


def test_no_token_types_means_type_zero():
    """Hugging Face adds token type 0 when none are given; so does the converted model, without
    embed_ids, and explicit zeros give the same."""
    hf = tiny(seed=3)
    model = from_hf(hf)
    ids, mask = padded_batch(seed=5)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).last_hidden_state
        got = model(ids, mask=mask)
        zeros = model(ids, mask=mask, embed_ids={"token_type": torch.zeros_like(ids)})
    assert max_diff(got, expected, mask) < TOL
    assert max_diff(zeros, expected, mask) < TOL


def test_token_types_matter_with_and_without_ids():
    """Type 1 everywhere differs from the default (so the fold keeps both types distinct), and
    matches Hugging Face given the same ids."""
    hf = tiny(seed=8)
    model = from_hf(hf)
    ids, _ = padded_batch(seed=6)
    ones = torch.ones_like(ids)
    with torch.no_grad():
        expected = hf(ids, token_type_ids=ones).last_hidden_state
        got = model(ids, embed_ids={"token_type": ones})
        default = model(ids)
    assert max_diff(got, expected) < TOL
    assert max_diff(default, expected) > 100 * TOL


def test_from_hf_dir_equals_from_hf(tmp_path):
    hf = tiny(seed=4)
    hf.save_pretrained(tmp_path)
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))


def test_checkpoint_with_a_prefix_and_index_buffers(tmp_path):
    """Checkpoints of BERT heads store the encoder under 'bert.' (older ones also the index
    buffers position_ids); the encoder part converts, the buffers are skipped."""
    hf = tiny(seed=6)
    hf.save_pretrained(tmp_path)
    state = {"bert." + k: v for k, v in hf.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))


def _folder_with(tmp_path, **changes):
    hf = tiny()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ({"hidden_act": "relu"}, "hidden_act='relu'"),
        ({"is_decoder": True}, "is_decoder=True"),
    ],
)
def test_unsupported_options_raise_naming_them(tmp_path, changes, option):
    folder = _folder_with(tmp_path, **changes)
    with pytest.raises(UnsupportedHFModel, match=f"BERT config: option {option}"):
        from_hf_dir(folder)


def test_heads_other_than_the_encoder_are_refused(tmp_path):
    folder = _folder_with(tmp_path, architectures=["BertForMaskedLM"])
    with pytest.raises(UnsupportedHFModel, match="'BertForMaskedLM' is not supported"):
        from_hf_dir(folder)


def test_embed_ids_default_keyword():
    """embed_ids_default lets forward omit a name (the default id is used); names without a
    default stay required, and bad defaults raise naming the keyword."""
    model = TransformerWrapper(
        num_tokens=20, max_seq_len=8, embed_num_tokens={"a": 3, "b": 2},
        embed_ids_default={"a": 2}, return_only_embed=True,
        attn_layers=Encoder(dim=16, depth=1, heads=2),
    ).eval()  # fmt: skip
    ids = torch.randint(0, 20, (1, 5))
    b = torch.zeros_like(ids)
    with torch.no_grad():
        omitted = model(ids, embed_ids={"b": b})
        given = model(ids, embed_ids={"a": torch.full_like(ids, 2), "b": b})
        assert max_diff(omitted, given) < 1e-6  # the same sum, added in another order
        assert max_diff(omitted, model(ids, embed_ids={"a": b, "b": b})) > 1e-2
        with pytest.raises(ValueError, match=r"\['a'\] may be omitted\), got \['a'\]"):
            model(ids, embed_ids={"a": b})
    with pytest.raises(ValueError, match="embed_ids_default must map names of embed_num_tokens"):
        TransformerWrapper(
            num_tokens=20,
            max_seq_len=8,
            embed_num_tokens={"a": 3},
            embed_ids_default={"a": 3},
            attn_layers=Encoder(dim=16, depth=1, heads=2),
        )
