"""anyformer -> Hugging Face: folders written by ``to_hf_dir`` load in ``transformers`` and give
the same outputs; ``from_hf_dir`` gives the same parameters back; options no family has are
refused by name; existing folders are never replaced."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hf_models import TOL, VOCAB, hf_greedy, max_diff, our_greedy, padded_batch, same_parameters
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer import Decoder, Encoder, TransformerWrapper
from anyformer.convert import from_hf_dir, to_hf, to_hf_dir

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)

_LLAMA = dict(
    dim=32, depth=2, heads=4, attn_dim_head=8, use_rmsnorm=True, norm_eps=1e-6, ff_glu=True,
    ff_swish=True, ff_inner_dim=48, ff_no_bias=True, rotary_pos_emb=True,
)  # fmt: skip
# learned position tables: anyformer scales its lookup by dim ** -0.5, a power of two for
# dim = 64, so the table written for Hugging Face (table * scale) reads back bitwise
_GPT2 = dict(
    dim=64, depth=2, heads=4, attn_dim_head=16, attn_qkv_bias=True, attn_out_bias=True,
    norm_bias=True, ff_gelu_tanh=True, ff_inner_dim=64,
)  # fmt: skip


def _decoder(wrapper: dict | None = None, **stack) -> TransformerWrapper:
    return TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=64, **(wrapper or {}), attn_layers=Decoder(**stack)
    )


def _bert(**overrides) -> TransformerWrapper:
    stack = dict(
        dim=64, depth=2, heads=4, attn_dim_head=16, pre_norm=False, attn_qkv_bias=True,
        attn_out_bias=True, norm_bias=True, norm_eps=1e-12, ff_inner_dim=48,
    )  # fmt: skip
    stack.update(overrides)
    return TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=64, embed_num_tokens={"token_type": 2},
        embed_ids_default={"token_type": 0}, post_emb_norm=True,
        post_emb_norm_bias=True, post_emb_norm_eps=1e-12, return_only_embed=True,
        attn_layers=Encoder(**stack),
    )  # fmt: skip


def _t5_encoder(**overrides) -> TransformerWrapper:
    stack = dict(
        dim=32, depth=2, heads=4, attn_dim_head=8, attn_scale=1.0, use_rmsnorm=True,
        norm_eps=1e-6, rel_pos_bias=True, rel_pos_num_buckets=8, rel_pos_max_distance=20,
        ff_inner_dim=48, ff_no_bias=True, ff_glu=True, ff_gelu_tanh=True,
    )  # fmt: skip
    stack.update(overrides)
    return TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=0, return_only_embed=True, attn_layers=Encoder(**stack)
    )


MODELS = {
    "llama-gqa": lambda: _decoder(**_LLAMA, attn_kv_heads=2),
    "llama-biases-tied": lambda: _decoder(
        {"tie_embedding": True},
        **{**_LLAMA, "ff_no_bias": False},
        attn_qkv_bias=True,
        attn_out_bias=True,
        rotary_theta=500000.0,
    ),
    "llama-linear-rope-wide-heads": lambda: _decoder(
        **{**_LLAMA, "attn_dim_head": 16}, rotary_interpolation_factor=2.0
    ),
    "llama-hidden": lambda: _decoder({"return_only_embed": True}, **_LLAMA),
    "mistral-window": lambda: _decoder(**_LLAMA, attn_kv_heads=2, attn_sliding_window=5),
    "phi3-window": lambda: _decoder(
        **{**_LLAMA, "attn_dim_head": 16}, rotary_emb_dim=8, attn_sliding_window=4
    ),
    "gemma2-windows-softcaps": lambda: _decoder(
        {"tie_embedding": True, "token_emb_scale": 32**0.5, "logit_softclamp_value": 30.0},
        **{**_LLAMA, "ff_swish": False, "norm_eps": 1e-6},
        ff_gelu_tanh=True,
        sandwich_norm=True,
        attn_kv_heads=2,
        attn_softclamp_logits=True,
        attn_logit_softclamp_value=50.0,
        attn_sliding_window=(4, None),
    ),
    "qwen2": lambda: _decoder(**_LLAMA, attn_kv_heads=1, attn_qkv_bias=True),
    "qwen3": lambda: _decoder(
        **_LLAMA, attn_kv_heads=2, attn_qk_rmsnorm=True, attn_qk_rmsnorm_eps=1e-6
    ),
    "phi3-partial-rotary": lambda: _decoder(
        **{**_LLAMA, "attn_dim_head": 16}, attn_kv_heads=2, rotary_emb_dim=8
    ),
    "gpt2": lambda: _decoder({"tie_embedding": True}, **_GPT2),
    "gpt2-untied-erf-gelu": lambda: _decoder(**{**_GPT2, "ff_gelu_tanh": False}),
    "bert": _bert,
    "t5-encoder": lambda: _t5_encoder(),
}
ARCH = {
    "llama-gqa": "LlamaForCausalLM",
    "llama-biases-tied": "LlamaForCausalLM",
    "llama-linear-rope-wide-heads": "LlamaForCausalLM",
    "llama-hidden": "LlamaModel",
    "mistral-window": "MistralForCausalLM",
    "phi3-window": "Phi3ForCausalLM",
    "gemma2-windows-softcaps": "Gemma2ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3-partial-rotary": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gpt2-untied-erf-gelu": "GPT2LMHeadModel",
    "bert": "BertModel",
    "t5-encoder": "T5EncoderModel",
}


def _random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norm gains away from 1, biases away from 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
            if "norm" in name and p.ndim == 1:  # Gemma writes g - 1: exact for g >= 0.5
                p.clamp_(min=0.5)
        for name, p in model.named_parameters():
            if name.endswith(("q_weight", "k_weight")):  # Qwen3: one q/k gain for all heads
                p.copy_(p[:1].expand_as(p))
    return model.eval()


def _hf_outputs(hf, ids, mask, name):
    with torch.no_grad():
        if name == "bert":
            types = (torch.arange(ids.shape[1]) >= 4).long().expand_as(ids)
            out = hf(ids, attention_mask=mask.long(), token_type_ids=types)
            return out.last_hidden_state, {"embed_ids": {"token_type": types}}
        out = hf(ids, attention_mask=mask.long())
        return (out.logits if hasattr(out, "logits") else out.last_hidden_state), {}


@pytest.mark.parametrize("name", list(MODELS))
def test_transformers_loads_the_folder_with_the_same_outputs(name, tmp_path):
    model = _random(MODELS[name]())
    folder = to_hf_dir(model, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [ARCH[name]]
    lm = ARCH[name].endswith(("CausalLM", "LMHeadModel"))
    auto = transformers.AutoModelForCausalLM if lm else transformers.AutoModel
    if name == "t5-encoder":  # AutoModel reads a t5 config as the encoder-decoder T5Model
        auto = transformers.T5EncoderModel
    hf = auto.from_pretrained(folder).eval()
    assert type(hf).__name__ == ARCH[name]
    ids, mask = padded_batch(vocab=VOCAB)
    expected, extra = _hf_outputs(hf, ids, mask, name)
    with torch.no_grad():
        got = model(ids, mask=mask, **extra)
    assert got.shape == expected.shape
    assert max_diff(got, expected, mask) < TOL


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_gives_bitwise_equal_parameters(name, tmp_path):
    model = _random(MODELS[name](), seed=3)
    back = from_hf_dir(to_hf_dir(model, tmp_path / "hf"))
    same_parameters(model, back)


def test_position_tables_read_back_within_one_step_when_the_scale_is_no_power_of_two(tmp_path):
    """dim = 32: scale = 32 ** -0.5; float32 tables have entries that no float32 value times
    the scale rounds back to, so those differ by one float32 step (and nothing else does)."""
    model = _random(
        _decoder({"tie_embedding": True}, **{**_GPT2, "dim": 32, "attn_dim_head": 8}), seed=3
    )
    back = from_hf_dir(to_hf_dir(model, tmp_path / "hf"))
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        if name != "pos_emb.emb.weight":
            assert torch.equal(ours[name], theirs[name]), name
    table, read = ours["pos_emb.emb.weight"], theirs["pos_emb.emb.weight"]
    step = torch.nextafter(table.abs(), torch.tensor(float("inf"))) - table.abs()
    assert ((read - table).abs() <= step).all()
    assert 0 < (read != table).float().mean() < 0.25


def test_greedy_continuations_match_in_transformers(tmp_path):
    model = _random(MODELS["llama-gqa"](), seed=5)
    hf = transformers.AutoModelForCausalLM.from_pretrained(to_hf_dir(model, tmp_path / "hf"))
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    assert torch.equal(hf_greedy(hf.eval(), prompt, 12), our_greedy(model, prompt, 12))


def test_sharded_folder_loads_in_transformers(tmp_path):
    model = _random(MODELS["llama-gqa"](), seed=7)
    _, state = to_hf(model)
    total = sum(t.numel() * t.element_size() for t in state.values())
    folder = to_hf_dir(model, tmp_path / "hf", max_shard_size=total // 3)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and not (folder / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == total
    assert sorted(p.name for p in folder.glob("*.safetensors")) == shards
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids, mask = padded_batch(vocab=VOCAB)
    with torch.no_grad():
        assert (
            max_diff(model(ids, mask=mask), hf(ids, attention_mask=mask.long()).logits, mask) < TOL
        )
    same_parameters(model, from_hf_dir(folder))


def test_max_shard_size_accepts_units(tmp_path):
    model = _random(MODELS["gpt2"]())
    folder = to_hf_dir(model, tmp_path / "a", max_shard_size="10KB")
    assert len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]) > 1
    with pytest.raises(ValueError, match="max_shard_size must be a byte count"):
        to_hf_dir(model, tmp_path / "b", max_shard_size="ten megs")
    assert not (tmp_path / "b").exists()


REFUSED = {
    "alibi": (lambda: _decoder(**{**_LLAMA, "rotary_pos_emb": False}, alibi_pos_bias=True),
              "alibi_pos_bias=True (Llama needs False)"),
    "layernorm-with-rotary": (lambda: _decoder(**{**_LLAMA, "use_rmsnorm": False}),
                              "use_rmsnorm=False (Llama needs True)"),
    "learned-positions-plus-rotary": (
        lambda: _decoder(**_LLAMA, disable_abs_pos_emb=False),
        "use_abs_pos_emb=True (Llama needs False)"),
    "memory-tokens": (lambda: _decoder({"num_memory_tokens": 2}, **_LLAMA),
                      "num_memory_tokens=2 (Llama needs None)"),
    "partial-rotary-with-qkv-bias": (
        lambda: _decoder(**{**_LLAMA, "attn_dim_head": 16}, rotary_emb_dim=8, attn_qkv_bias=True),
        "rotary_emb_dim=8 (Qwen2 needs 16)"),
    "qk-norm": (lambda: _decoder(**_LLAMA, attn_qk_norm=True), "attn_qk_norm=True"),
    "gpt2-rmsnorm": (lambda: _decoder(**{**_GPT2, "norm_bias": False}, use_rmsnorm=True),
                     "use_rmsnorm=True (GPT-2 needs False)"),
    "t5-encoder-exact-gated-gelu": (
        lambda: _t5_encoder(ff_gelu_tanh=False), "ff_gelu_tanh=False (T5 needs True)"
    ),
    "t5-encoder-scaled-attention": (
        lambda: _t5_encoder(attn_scale=None), "attn_scale=0.3535533905932738 (T5 needs 1.0)"
    ),
    "bert-without-token-types": (
        lambda: TransformerWrapper(
            num_tokens=VOCAB, max_seq_len=64, post_emb_norm=True, post_emb_norm_bias=True,
            post_emb_norm_eps=1e-12, return_only_embed=True,
            attn_layers=Encoder(dim=32, depth=1, heads=4, attn_dim_head=8, pre_norm=False,
                                attn_qkv_bias=True, attn_out_bias=True, norm_bias=True,
                                norm_eps=1e-12)),
        "embed_num_tokens={} (BERT needs {'token_type': 1})"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFUSED))
def test_options_without_a_family_are_refused_by_name(name, tmp_path):
    build, message = REFUSED[name]
    model = build()
    with pytest.raises(ValueError, match="does not map exactly") as info:
        to_hf(model)
    assert message in str(info.value)
    with pytest.raises(ValueError, match="does not map exactly"):
        to_hf_dir(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and list(tmp_path.iterdir()) == []


def test_forcing_a_family_names_its_differences():
    model = MODELS["gpt2"]()
    with pytest.raises(ValueError, match=r"closest, Llama, differs in: .*use_rmsnorm=False"):
        to_hf(model, family="llama")
    with pytest.raises(ValueError, match="unknown family 'mamba'"):
        to_hf(model, family="mamba")
    assert to_hf(model, family="GPT-2")[0]["model_type"] == "gpt2"


def test_existing_folders_and_files_are_never_replaced(tmp_path):
    model = MODELS["llama-gqa"]()
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"{full} exists and is not empty"):
        to_hf_dir(model, full)
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    file = tmp_path / "file"
    file.write_text("mine")
    with pytest.raises(FileExistsError, match=f"{file} exists and is not a folder"):
        to_hf_dir(model, file)
    assert file.read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sorted(p.name for p in to_hf_dir(model, empty).iterdir()) == [
        "config.json", "model.safetensors",
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "full"]  # no temporaries


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from anyformer.convert import export

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        export.to_hf_dir(MODELS["gpt2"](), tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_models_export_in_bfloat16(tmp_path):
    model = _random(MODELS["qwen2"]()).to(torch.bfloat16)
    folder = to_hf_dir(model, tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    same_parameters(model, from_hf_dir(folder))


def test_qwen3_needs_one_qk_gain_for_all_heads():
    model = _random(MODELS["qwen3"]())
    with torch.no_grad():
        model.get_parameter("attn_layers.layers.2.branch.qk_rmsnorm.k_weight")[1, 0, 3] += 0.5
    with pytest.raises(
        ValueError,
        match=r"layers\.1\.self_attn\.k_norm\.weight: attn_qk_rmsnorm "
        "gains differ between heads",
    ):
        to_hf(model)


def test_quantized_models_are_refused_by_module(tmp_path):
    from anyformer.quantize import quantize_linears

    model = MODELS["llama-gqa"]()
    quantize_linears(model, "int8")
    with pytest.raises(
        ValueError, match=r"attn_layers\.layers\.0\.branch\.qkv\.to_qkv is a Int8Linear"
    ):
        to_hf_dir(model, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_autoregressive_wrapper_exports_its_net():
    from anyformer import AutoregressiveWrapper

    model = _random(MODELS["gpt2"]())
    config, state = to_hf(AutoregressiveWrapper(model))
    assert config == to_hf(model)[0]
    assert torch.equal(
        state["transformer.h.1.mlp.c_fc.weight"],
        model.get_parameter("attn_layers.layers.3.branch.proj_in.weight").t(),
    )


@settings(max_examples=8, deadline=None)
@given(
    heads_kv=st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 2)]),
    dim_head=st.sampled_from([8, 16]),
    bias=st.sampled_from(["none", "all", "qkv"]),
    qk_norm=st.booleans(),
    partial=st.booleans(),
    tied=st.booleans(),
    theta=st.sampled_from([10000.0, 500000.0]),
    seed=st.integers(0, 2**16),
)
def test_llama_like_options_export_exactly_or_name_the_option(
    heads_kv, dim_head, bias, qk_norm, partial, tied, theta, seed
):
    """Across Llama-like options: either the export loads in transformers with the same logits
    and reads back bitwise, or the error names an option that differs."""
    heads, kv = heads_kv
    stack = {**_LLAMA, "heads": heads, "attn_kv_heads": kv, "attn_dim_head": dim_head}
    stack.update(rotary_theta=theta, rotary_emb_dim=dim_head // 2 if partial else dim_head)
    stack.update(attn_qkv_bias=bias != "none", attn_out_bias=bias == "all")
    if qk_norm:
        stack.update(attn_qk_rmsnorm=True, attn_qk_rmsnorm_eps=1e-6)
    model = _random(_decoder({"tie_embedding": tied}, **stack), seed=seed)
    # families: Llama (biases all or none), Qwen2 (q/k/v only), Qwen3 (qk-norm), Phi-3 (partial)
    expected = {
        (False, False, "none"): "LlamaForCausalLM", (False, False, "all"): "LlamaForCausalLM",
        (False, False, "qkv"): "Qwen2ForCausalLM", (True, False, "none"): "Qwen3ForCausalLM",
        (True, False, "all"): "Qwen3ForCausalLM", (False, True, "none"): "Phi3ForCausalLM",
    }.get((qk_norm, partial, bias))  # fmt: skip
    if expected is None:
        with pytest.raises(
            ValueError,
            match=r"differs in: .*(rotary_emb_dim|attn_qk_rmsnorm|"
            r"attn_qkv_bias|attn_out_bias)=",
        ):
            to_hf(model)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = to_hf_dir(model, Path(tmp) / "hf")
        assert json.loads((folder / "config.json").read_text())["architectures"] == [expected]
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        ids, mask = padded_batch(vocab=VOCAB, seed=seed)
        with torch.no_grad():
            expected_logits = hf(ids, attention_mask=mask.long()).logits
            assert max_diff(model(ids, mask=mask), expected_logits, mask) < TOL
        same_parameters(model, from_hf_dir(folder))


def test_encoder_decoders_other_than_t5_are_refused_by_option():
    from anyformer import XTransformer

    model = XTransformer(
        dim=32, enc_num_tokens=VOCAB, enc_depth=1, enc_heads=2, enc_max_seq_len=16,
        dec_num_tokens=VOCAB, dec_depth=1, dec_heads=2, dec_max_seq_len=16,
    )  # fmt: skip
    # XTransformer exports only as T5ForConditionalGeneration (tests/test_convert_export_t5.py)
    with pytest.raises(ValueError, match=r"the closest, T5, differs in: .*enc_use_rmsnorm=False"):
        to_hf(model)
