"""GPT-2: a tiny Hugging Face model with random weights, converted, gives the same logits and the
same greedy continuation; a folder written by transformers loads without it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
from hf_models import TOL, VOCAB, hf_greedy, max_diff, our_greedy, padded_batch, same_parameters
from hf_models import tiny_gpt2 as tiny
from safetensors.torch import load_file, save_file

from anyformer import TransformerWrapper
from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"activation_function": "gelu", "n_inner": 40, "layer_norm_epsilon": 1e-6},
        {"tie_word_embeddings": False, "activation_function": "gelu_pytorch_tanh"},
    ],
    ids=["default", "exact-gelu-n_inner-eps", "untied-head"],
)
def test_logits_match_on_a_padded_batch(overrides):
    hf = tiny(**overrides)
    model = from_hf(hf)
    assert isinstance(model, TransformerWrapper)
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).logits
        got = model(ids, mask=mask)
    assert got.shape == (3, 12, VOCAB)
    assert max_diff(got, expected, mask) < TOL


def test_left_padding_with_positions_matches():
    """Left padding: each row's positions count from its first real token (pos= / position_ids)."""
    hf = tiny(seed=3)
    model = from_hf(hf)
    ids, right = padded_batch(seed=4)
    mask = right.flip(1)
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long(), position_ids=pos).logits
        got = model(ids, mask=mask, pos=pos)
    assert max_diff(got, expected, mask) < TOL


def test_hidden_states_of_gpt2_model():
    hf = tiny(arch="GPT2Model", seed=2)
    model = from_hf(hf)
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).last_hidden_state
        got = model(ids, mask=mask)
    assert got.shape == (3, 12, 32)
    assert max_diff(got, expected, mask) < TOL


def test_greedy_generation_equals_hugging_face():
    hf = tiny(seed=5)
    model = from_hf(hf)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    expected = hf_greedy(hf, prompt, 20)
    assert expected.shape == (2, 20)
    assert torch.equal(our_greedy(model, prompt, 20), expected)


def test_from_hf_dir_equals_from_hf(tmp_path):
    hf = tiny(seed=7)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))


def test_sharded_and_torch_folders(tmp_path):
    hf = tiny(seed=8)
    expected = from_hf(hf)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    same_parameters(from_hf_dir(sharded), expected)
    # the original GPT-2 files: pytorch_model.bin with base-model names (no "transformer.")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((sharded / "config.json").read_text())
    base = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    base.pop("lm_head.weight")
    torch.save(base, legacy / "pytorch_model.bin")
    same_parameters(from_hf_dir(legacy), expected)


def test_dtype_argument(tmp_path):
    hf = tiny(seed=9)
    hf.save_pretrained(tmp_path)
    model = from_hf_dir(tmp_path, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = hf.double()(ids, attention_mask=mask.long()).logits
        got = model(ids, mask=mask)
    assert max_diff(got, expected, mask) < 1e-10


@pytest.mark.parametrize(
    "overrides, option",
    [
        ({"activation_function": "relu"}, "activation_function='relu'"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
        ({"scale_attn_weights": False}, "scale_attn_weights=False"),
    ],
)
def test_unsupported_options_raise_naming_them(overrides, option):
    with pytest.raises(UnsupportedHFModel, match=f"GPT-2 config: option {option}"):
        from_hf(tiny(**overrides))


def test_unsupported_architecture_and_unknown_tensors_raise(tmp_path):
    with pytest.raises(
        UnsupportedHFModel, match="'GPT2ForSequenceClassification' is not supported"
    ):
        from_hf(tiny(arch="GPT2ForSequenceClassification"))
    hf = tiny()
    hf.save_pretrained(tmp_path)
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state["transformer.h.0.attn.extra.weight"] = torch.zeros(2)
    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(UnsupportedHFModel, match=re.escape("transformer.h.0.attn.extra.weight")):
        from_hf_dir(tmp_path)
    del state["transformer.h.0.attn.extra.weight"], state["transformer.ln_f.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(
        UnsupportedHFModel, match=re.escape("missing tensor 'transformer.ln_f.bias'")
    ):
        from_hf_dir(tmp_path)


# --------------------------------------------------------------------------- hostile folders


def _sharded(tmp_path):
    folder = tmp_path / "sharded"
    tiny(seed=8).save_pretrained(folder, max_shard_size="20KB")
    return folder, folder / "model.safetensors.index.json"


def _point_first_shard(index, target: str) -> None:
    data = json.loads(index.read_text())
    first = sorted(set(data["weight_map"].values()))[0]
    data["weight_map"] = {k: (target if v == first else v) for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "shard, message",
    [
        ("../outside.safetensors", r"shard '\.\./outside\.safetensors' is outside the model"),
        ("sub/../../outside.safetensors", r"is outside the model folder"),
        ("/etc/passwd", r"shard '/etc/passwd' is outside the model folder"),
        ("", r"a shard must be a file name, got ''"),
    ],
)
def test_shard_index_paths_stay_in_the_folder(tmp_path, shard, message):
    folder, index = _sharded(tmp_path)
    first = folder / sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    first.rename(tmp_path / "outside.safetensors")  # the file the index would reach
    _point_first_shard(index, shard)
    with pytest.raises(ValueError, match=message):
        from_hf_dir(folder)


def test_a_shard_symlink_leading_outside_is_refused(tmp_path):
    folder, index = _sharded(tmp_path)
    first = folder / sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    first.rename(tmp_path / "outside.safetensors")
    first.symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(ValueError, match=r"leads outside the model folder"):
        from_hf_dir(folder)


def test_hub_cache_snapshots_may_link_into_their_blobs(tmp_path):
    """The Hugging Face hub cache keeps snapshots/<rev>/<file> as links to ../../blobs/<hash>."""
    hf = tiny(seed=8)
    cache = tmp_path / "models--x--y"
    snapshot = cache / "snapshots" / "abc"
    hf.save_pretrained(snapshot, max_shard_size="20KB")
    (cache / "blobs").mkdir()
    for file in snapshot.glob("*.safetensors"):
        blob = cache / "blobs" / file.name
        file.rename(blob)
        file.symlink_to(Path("../../blobs") / file.name)
    same_parameters(from_hf_dir(snapshot), from_hf(hf))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_tensors_are_refused_not_cast(tmp_path, dtype):
    hf = tiny()
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["transformer.h.0.mlp.c_fc.bias"] = torch.ones(128, dtype=dtype)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(
        ValueError, match=rf"tensor 'transformer\.h\.0\.mlp\.c_fc\.bias' is stored as {dtype}"
    ):
        from_hf_dir(tmp_path)


def test_tensors_of_another_dtype_than_config_declares_are_refused(tmp_path):
    hf = tiny()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    declared = "dtype" if "dtype" in config else "torch_dtype"
    assert config[declared] == "float32"
    state = load_file(tmp_path / "model.safetensors")
    state["transformer.wte.weight"] = state["transformer.wte.weight"].half()
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"'transformer\.wte\.weight' is stored as torch\.float16, but .*float32"
    ):
        from_hf_dir(tmp_path)


def test_a_config_far_larger_than_the_checkpoint_fails_fast(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_layer"] = 100_000
    (tmp_path / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"larger than its weights.*n_layer=100000"):
        from_hf_dir(tmp_path)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("n_layer", "x", r"\(TypeError: AttentionLayers: depth must be int, got 'x'"),
        ("n_embd", None, r"\(TypeError: unsupported operand"),
        ("n_head", 0, r"\(ZeroDivisionError: integer modulo by zero\)"),
    ],
)
def test_config_values_of_the_wrong_type_raise_one_value_error(tmp_path, key, value, message):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"cannot build the GPT-2 model from its config " + message
    ):
        from_hf_dir(tmp_path)


def test_a_truncated_checkpoint_raises_one_value_error(tmp_path):
    tiny().save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or unreadable"):
        from_hf_dir(tmp_path)
