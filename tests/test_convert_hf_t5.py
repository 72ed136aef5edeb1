"""T5: tiny Hugging Face T5 models with random weights, converted, give the same logits on a
padded batch and the same 20 greedy tokens (cached decoding) as ``generate``; T5 v1.0 (ReLU,
tied and rescaled head) and v1.1 / Flan-T5 (gated tanh-GELU, untied head); the encoder alone;
a folder written by transformers; unsupported options raise naming them."""

from __future__ import annotations

import json
import re

import pytest
import torch
from hf_models import TOL, max_diff, same_parameters

from anyformer import TransformerWrapper, XTransformer
from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir
from anyformer.convert.hf_base import HFConfig
from anyformer.convert.hf_t5 import t5_rules
from anyformer.convert.hf_table import TensorRule
from anyformer.nn.positions import t5_bucket

transformers = pytest.importorskip("transformers")

VOCAB = 97
START = 0  # decoder_start_token_id = pad_token_id, as in T5


def tiny_t5(seed=0, arch="T5ForConditionalGeneration", untie=False, **overrides):
    """A tiny T5 (v1.0 by default: ReLU, tied head). ``untie``: a separate LM head (Flan-T5),
    which transformers 5 only builds from a checkpoint whose head differs: set here by hand."""
    kwargs = dict(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        dropout_rate=0.0, decoder_start_token_id=START, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(transformers.T5Config(**kwargs)).eval()
    if untie:
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
    return model


V10 = {}
V11 = {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


def _batch(seed=1, src_lens=(30, 17, 25), tgt_len=26):
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


@pytest.mark.parametrize(
    "overrides, untie",
    [(V10, False), (V11, True), (V11, False), ({"feed_forward_proj": "gated-silu"}, False)],
    ids=["v1.0-relu-tied-scaled", "v1.1-gated-gelu-untied", "gated-gelu-tied-unscaled", "silu"],
)
def test_logits_match_on_a_padded_batch(overrides, untie):
    hf = tiny_t5(untie=untie, **overrides)
    model = from_hf(hf)
    assert isinstance(model, XTransformer)
    head = model.decoder.net
    assert (head.to_logits.weight is head.token_emb.emb.weight) == (not untie)
    src, mask, tgt = _batch()
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
    got = _logits(model, src, mask, tgt)
    assert got.shape == (3, 26, VOCAB)
    assert max_diff(got, expected) < TOL


@pytest.mark.parametrize("overrides, untie", [(V10, False), (V11, True)], ids=["v1.0", "v1.1"])
def test_twenty_greedy_tokens_with_the_cache_equal_generate(overrides, untie):
    # transformers' cache sizes itself by num_layers: equal depths on both sides here
    hf = tiny_t5(seed=2, untie=untie, num_decoder_layers=2, **overrides)
    model = from_hf(hf)
    src, mask, _ = _batch(seed=3)
    with torch.no_grad():
        expected = hf.generate(
            input_ids=src, attention_mask=mask.long(), max_new_tokens=20, min_new_tokens=20,
            do_sample=False, num_beams=1, eos_token_id=None,
        )  # fmt: skip
    assert expected[:, 0].eq(START).all()
    start = torch.full((3, 1), START)
    got = model.generate(src, start, 20, mask=mask, temperature=0.0, cache_kv=True)
    assert torch.equal(got, expected[:, 1:])


@pytest.mark.parametrize("untie", [False, True], ids=["tied", "untied"])
def test_mt5_is_never_rescaled(untie):
    """mT5: T5 v1.1's architecture; transformers 5 never scales its decoder output."""
    config = transformers.MT5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(13)
    hf = transformers.MT5ForConditionalGeneration(config).eval()
    if untie:
        hf.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
    model = from_hf(hf)
    src, mask, tgt = _batch(seed=14)
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
    assert max_diff(_logits(model, src, mask, tgt), expected) < TOL


def test_encoder_model_last_hidden_state():
    hf = tiny_t5(seed=4, arch="T5EncoderModel", **V11)
    model = from_hf(hf)
    assert isinstance(model, TransformerWrapper)
    src, mask, _ = _batch(seed=5)
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=mask.long()).last_hidden_state
        got = model(src, mask=mask)
    assert max_diff(got, expected, mask) < TOL


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("buckets, distance", [(32, 128), (8, 20), (6, 7)])
def test_buckets_equal_hugging_face(causal, buckets, distance):
    """anyformer's bucket of distance q - k equals T5's bucket of relative position k - q."""
    relative = torch.arange(-300, 301)
    bucket_fn = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    expected = bucket_fn(relative, not causal, buckets, distance)
    got = t5_bucket(-relative, causal=causal, num_buckets=buckets, max_distance=distance)
    assert torch.equal(got, expected)


def test_from_hf_dir_equals_from_hf(tmp_path):
    hf = tiny_t5(seed=6, untie=True, **V11)
    hf.save_pretrained(tmp_path)
    model = from_hf_dir(tmp_path)
    same_parameters(model, from_hf(hf))
    assert model.decoder.net.to_logits.weight is not model.decoder.net.token_emb.emb.weight


def _transformers4_folder(tmp_path, hf, **config_changes):
    """A folder as transformers 4 wrote T5: every tied copy stored, no scale_decoder_outputs."""
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("scale_decoder_outputs", None)
    config.update(config_changes)
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(
        8, 4
    )  # saved by old checkpoints, never read
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    return tmp_path


@pytest.mark.parametrize(
    "overrides, untie, tie_word_embeddings",
    [(V10, False, True), (V11, True, False)],
    ids=["t5-v1.0", "flan-t5"],
)
def test_transformers4_folders(tmp_path, overrides, untie, tie_word_embeddings):
    """transformers 4 configs say tie_word_embeddings (v1.0: true, the head rescaled; Flan-T5:
    false, a separate head) and carry no scale_decoder_outputs."""
    hf = tiny_t5(seed=7, untie=untie, **overrides)
    folder = _transformers4_folder(tmp_path, hf, tie_word_embeddings=tie_word_embeddings)
    model = from_hf_dir(folder)
    src, mask, tgt = _batch(seed=8)
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
    assert max_diff(_logits(model, src, mask, tgt), expected) < TOL


def test_tied_copies_that_differ_raise(tmp_path):
    hf = tiny_t5(seed=9)
    folder = _transformers4_folder(tmp_path, hf)
    state = torch.load(folder / "pytorch_model.bin")
    state["encoder.embed_tokens.weight"] = state["encoder.embed_tokens.weight"] + 1
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UnsupportedHFModel, match=r"'encoder\.embed_tokens\.weight' differs from"):
        from_hf_dir(folder)


def test_name_table_inverts():
    """Every rule maps the Hugging Face tensors to anyformer's and back (for export)."""
    hf = tiny_t5(seed=10, untie=True, **V11)
    config = HFConfig({**hf.config.to_dict(), "tie_word_embeddings": False}, "T5")
    model, state = from_hf(hf), hf.state_dict()
    ours = model.state_dict()
    rules = [r for r in t5_rules(config, "lm") if isinstance(r, TensorRule)]
    for rule in rules:
        assert torch.equal(ours[rule.ours], rule.to_ours([state[n] for n in rule.hf]))
        for name, tensor in rule.to_hf(ours[rule.ours]).items():
            assert torch.equal(tensor, state[name]), name
    covered = {n for r in rules for n in r.hf}
    assert covered == set(state) - {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}


def _folder_with(tmp_path, **changes):
    tiny_t5().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"feed_forward_proj": "gated-tanh"}, "feed_forward_proj='gated-tanh'"),
        ({"feed_forward_proj": "relu-gated"}, "feed_forward_proj='relu-gated'"),
        ({"relative_attention_num_buckets": 2}, "relative_attention_num_buckets=2"),
        ({"is_decoder": True}, "is_decoder=True"),
    ],
)
def test_unsupported_options_raise_naming_them(tmp_path, changes, option):
    folder = _folder_with(tmp_path, **changes)
    with pytest.raises(UnsupportedHFModel, match=f"T5 config: option {option}"):
        from_hf_dir(folder)


def test_heads_other_than_the_supported_ones_are_refused(tmp_path):
    folder = _folder_with(tmp_path, architectures=["T5ForQuestionAnswering"])
    with pytest.raises(UnsupportedHFModel, match="'T5ForQuestionAnswering' is not supported"):
        from_hf_dir(folder)


@pytest.mark.parametrize("overrides, untie", [(V10, False), (V11, True)], ids=["tied", "untied"])
def test_save_pretrained_round_trip_keeps_ties_and_outputs(tmp_path, overrides, untie):
    """The converted model is a plain anyformer model: saved and reloaded, same ties, same
    logits."""
    model = from_hf(tiny_t5(seed=11, untie=untie, **overrides))
    model.save_pretrained(tmp_path)
    loaded = XTransformer.from_pretrained(tmp_path)
    net = loaded.decoder.net
    assert net.token_emb is loaded.encoder.token_emb
    assert (net.to_logits.weight is net.token_emb.emb.weight) == (not untie)
    src, mask, tgt = _batch(seed=12)
    assert torch.equal(_logits(loaded.eval(), src, mask, tgt), _logits(model, src, mask, tgt))


# ----------------------------------------------------------------- the options T5 needs


@pytest.mark.parametrize("kernel", ["auto", "explicit"])
def test_attn_scale_equals_scaled_queries(kernel):
    """attn_scale=s multiplies q.k by s: the same as the default dim_head ** -0.5 with the query
    projection multiplied by s * dim_head ** 0.5 (self- and cross-attention)."""
    from anyformer import Decoder

    s, dh = 0.3, 8
    kw = dict(dim=16, depth=1, heads=2, attn_dim_head=dh, cross_attend=True, attn_kernel=kernel)
    torch.manual_seed(0)
    scaled = Decoder(attn_scale=s, **kw).eval()
    plain = Decoder(**kw).eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if name.endswith("qkv.to_qkv.weight"):
                p[: 2 * dh].mul_(s * dh**0.5)  # the query rows (2 heads)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    with torch.no_grad():
        assert max_diff(scaled(x, context=context), plain(x, context=context)) < 1e-5


def test_t5_bias_is_added_unscaled_with_attn_scale_one():
    """With attn_scale=1 the T5 bias multiplier is 1 (by default dim_head ** 0.5)."""
    from anyformer import Encoder

    kw = dict(dim=16, depth=1, heads=2, attn_dim_head=8, rel_pos_bias=True)
    assert Encoder(**kw).attn_bias.scale == pytest.approx(8**0.5)
    assert Encoder(attn_scale=1.0, **kw).attn_bias.scale == 1.0
    assert Encoder(attn_scale=0.25, **kw).attn_bias.scale == 4.0


def test_ff_relu_by_hand():
    from anyformer.nn.feedforward import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(8, relu=True, mult=2).eval()
    x = torch.randn(3, 8)
    expected = ff.proj_out(torch.clamp(ff.proj_in(x), min=0))
    assert torch.equal(ff(x), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attn_scale": 0.0}, "attn_scale must be > 0, got 0.0"),
        ({"attn_scale": float("inf")}, "attn_scale must be finite"),
        ({"attn_scale": 1.0, "attn_qk_norm": True}, "attn_scale and attn_qk_norm=True"),
        ({"ff_relu": True, "ff_swish": True}, "ff_relu=True and ff_swish=True"),
    ],
)
def test_new_options_refuse_bad_values_naming_them(kwargs, message):
    from anyformer import Encoder

    with pytest.raises(ValueError, match=re.escape(message)):
        Encoder(dim=16, depth=1, heads=2, **kwargs)
