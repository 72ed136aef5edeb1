"""anyformer XTransformer -> Hugging Face T5ForConditionalGeneration: folders written by
``to_hf_dir`` load in ``transformers`` with the same logits and greedy tokens, read back
bitwise through ``from_hf_dir``; options T5 lacks are refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import TOL, max_diff, same_parameters
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer import XTransformer
from anyformer.convert import from_hf, from_hf_dir, to_hf, to_hf_dir
from anyformer.convert.hf_export_t5 import _unscaled_gain
from anyformer.convert.hf_table import TensorRule

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)

VOCAB = 61
START = 0  # decoder_start_token_id = pad_token_id = pad_value


def _t5(dim=32, tied=True, dec_depth=2, tie_token_emb=True, **overrides) -> XTransformer:
    side = dict(
        num_tokens=VOCAB, max_seq_len=0, depth=2, heads=4, attn_dim_head=8, attn_scale=1.0,
        use_rmsnorm=True, norm_eps=1e-6, rel_pos_bias=True, rel_pos_num_buckets=8,
        rel_pos_max_distance=20, ff_inner_dim=48, ff_no_bias=True, ff_relu=True,
    )  # fmt: skip
    side.update({k: v for k, v in overrides.items() if not k.startswith(("enc_", "dec_"))})
    keywords = {f"{p}{k}": v for p in ("enc_", "dec_") for k, v in side.items()}
    keywords.update({k: v for k, v in overrides.items() if k.startswith(("enc_", "dec_"))})
    keywords["dec_depth"] = dec_depth
    return XTransformer(
        dim=dim, tie_token_emb=tie_token_emb, dec_tie_embedding=tied, **keywords
    ).eval()


def _random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norm gains in [0.5, 1.5])."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


_GATED = {"ff_relu": False, "ff_glu": True, "ff_gelu_tanh": True}
MODELS = {
    # (model, tie_word_embeddings, scale_decoder_outputs written)
    "v1.0-relu-tied-scaled": (lambda: _t5(dim=64), True, True),
    "v1.1-gated-gelu-untied": (lambda: _t5(tied=False, **_GATED), False, False),
    "tied-gains-without-preimage": (lambda: _t5(dim=32, dec_depth=3), True, False),
    "gated-silu-tied": (lambda: _t5(dim=64, ff_relu=False, ff_glu=True, ff_swish=True), True, True),
}


def _batch(seed=1, src_lens=(30, 17, 25), tgt_len=12):
    """Right-padded sources (long enough for the logarithmic buckets) and decoder inputs."""
    g = torch.Generator().manual_seed(seed)
    n = max(src_lens)
    src = torch.randint(2, VOCAB, (len(src_lens), n), generator=g)
    mask = torch.arange(n)[None] < torch.tensor(src_lens)[:, None]
    tgt = torch.randint(2, VOCAB, (len(src_lens), tgt_len), generator=g)
    tgt[:, 0] = START
    return src, mask, tgt


@torch.no_grad()
def _logits(model, src, mask, tgt):
    enc, context_mask = model.encode(src, mask)
    return model.decoder.net(tgt, context=enc, context_mask=context_mask)


@pytest.mark.parametrize("name", list(MODELS))
def test_transformers_loads_the_folder_with_the_same_logits(name, tmp_path):
    build, tied, scaled = MODELS[name]
    model = _random(build())
    to_hf_dir(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["T5ForConditionalGeneration"]
    assert (config["tie_word_embeddings"], config["scale_decoder_outputs"]) == (tied, scaled)
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "m").eval()
    assert hf.config.scale_decoder_outputs is scaled
    src, mask, tgt = _batch()
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
    assert max_diff(_logits(model, src, mask, tgt), theirs) < TOL


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_gives_bitwise_equal_parameters(name, tmp_path):
    model = _random(MODELS[name][0]())
    same_parameters(model, from_hf_dir(to_hf_dir(model, tmp_path / "m")))


@pytest.mark.parametrize("name", ["v1.0-relu-tied-scaled", "v1.1-gated-gelu-untied"])
def test_twenty_greedy_tokens_equal_generate(name, tmp_path):
    # transformers' cache sizes itself by num_layers: equal depths on both sides here
    model = _random(MODELS[name][0](), seed=2)
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(to_hf_dir(model, tmp_path / "m"))
    src, mask, _ = _batch(seed=3)
    with torch.no_grad():
        expected = hf.eval().generate(
            input_ids=src, attention_mask=mask.long(), max_new_tokens=20, min_new_tokens=20,
            do_sample=False, num_beams=1, eos_token_id=None,
        )  # fmt: skip
    assert expected[:, 0].eq(START).all()
    got = model.generate(src, torch.full((3, 1), START), 20, mask=mask, temperature=0.0)
    assert torch.equal(got, expected[:, 1:])


def test_imported_v1_0_is_written_back_as_v1_0(tmp_path):
    """A T5 v1.0 read from transformers (d_model 32: the scale is no power of two) goes back
    with scale_decoder_outputs=True, the same logits and, read again, the same parameters."""
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(5)
    original = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        original.decoder.final_layer_norm.weight.uniform_(0.1, 3.0)
    model = from_hf(original)
    folder = to_hf_dir(model, tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["scale_decoder_outputs"] is True
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    src, mask, tgt = _batch(seed=4)
    with torch.no_grad():
        want = original(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        got = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
    assert max_diff(got, want) < TOL
    same_parameters(model, from_hf_dir(folder))


@settings(max_examples=30, deadline=None)
@given(
    dim=st.integers(1, 1024),
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=16),
)
def test_unscaled_gain_is_an_exact_preimage_when_one_exists(dim, values):
    """The gain written for Hugging Face reads back bitwise through the import's rule; for
    gains the import produced (images of some float) one is always found."""
    scale = dim**-0.5
    rule = TensorRule("g", ("g",), scale=scale)
    h = torch.tensor(values, dtype=torch.float32)
    image = rule.to_ours([h])
    found = _unscaled_gain(image, scale)
    assert found is not None and torch.equal(rule.to_ours([found]), image)
    arbitrary = _unscaled_gain(h, scale)
    assert arbitrary is None or torch.equal(rule.to_ours([arbitrary]), h)


REFUSED = {
    "separate-embeddings": ({"tie_token_emb": False}, "tie_token_emb=False (T5 needs True)"),
    "decoder-rotary": ({"dec_rotary_pos_emb": True}, "dec_rotary_pos_emb=True"),
    "unequal-heads": ({"dec_heads": 2, "dec_attn_dim_head": 16}, "dec_heads=2 (T5 needs 4)"),
    "length-limit": ({"max_seq_len": 64}, "enc_max_seq_len=64 (T5 needs 0)"),
    "scaled-attention": ({"attn_scale": None}, "enc_attn_scale=0.35"),
    "layernorm": ({"use_rmsnorm": False}, "enc_use_rmsnorm=False (T5 needs True)"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_options_t5_lacks_are_refused_by_name(name, tmp_path):
    overrides, message = REFUSED[name]
    model = _t5(**overrides)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_hf_dir(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == []


def test_forcing_another_family_on_an_encoder_decoder_is_refused():
    with pytest.raises(ValueError, match="unknown family 'llama'"):
        to_hf(_t5(), family="llama")


@pytest.mark.parametrize("dim, scaled", [(64, True), (32, False)])
def test_bfloat16_models_read_back_bitwise(dim, scaled, tmp_path):
    model = _random(_t5(dim=dim)).to(torch.bfloat16)
    folder = to_hf_dir(model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert (config["dtype"], config["scale_decoder_outputs"]) == ("bfloat16", scaled)
    same_parameters(model, from_hf_dir(folder))
