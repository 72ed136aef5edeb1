"""Gemma 2 and Gemma 3 (text): tiny Hugging Face models with random weights (and random norm
gains, so that the (1 + w) form matters) and tiny sliding windows (4) on sequences of 10-26
tokens, converted, give the same logits on a padded batch and the same 20 greedy tokens with
the cache; each Gemma feature is shown to matter; the options added for them
(``token_emb_scale``, ``rotary_local_theta``) are tested on their own; options that cannot be
reproduced raise naming them."""

from __future__ import annotations

import math

import pytest
import torch
from hf_models import (
    TOL,
    VOCAB,
    hf_greedy,
    max_diff,
    our_greedy,
    padded_batch,
    same_parameters,
    transformers,
)

from anyformer import Decoder, TransformerWrapper
from anyformer.convert import UnsupportedHFModel, from_hf, from_hf_dir, supported_architectures
from anyformer.convert.hf import _convert

LENS = (12, 7, 10)  # the longest is three windows long

BASE = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=8, intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=128,
    bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=0.1,
    sliding_window=4, query_pre_attn_scalar=12,
)  # fmt: skip

GEMMA3_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
    "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
}


def tiny(arch, seed=0, **overrides):
    """A tiny Gemma 2 / Gemma 3 model; its (zero-initialised) norm weights made random."""
    config_cls = transformers.Gemma2Config if "Gemma2" in arch else transformers.Gemma3TextConfig
    kwargs = dict(BASE)
    if "Gemma3" in arch:
        kwargs.update(layer_types=["sliding_attention", "full_attention"] * 2,
                      rope_parameters=GEMMA3_ROPE)  # fmt: skip
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config_cls(**kwargs)).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def logits_diff(hf, model, lens=LENS):
    ids, mask = padded_batch(lens)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).logits
        got = model(ids, mask=mask)
    assert got.shape == expected.shape
    return max_diff(got, expected, mask)


GEMMA2 = {
    "default-caps": {},  # 50 / 30: barely reached by a tiny model
    "small-caps": {"attn_logit_softcapping": 2.0, "final_logit_softcapping": 1.5},
    "no-caps-mha-untied": {"attn_logit_softcapping": None, "final_logit_softcapping": None,
                           "num_key_value_heads": 4, "tie_word_embeddings": False},
    "window-3-all-global": {"sliding_window": 3, "layer_types": ["full_attention"] * 4},
    "exact-gelu-eps": {"hidden_activation": "gelu", "rms_norm_eps": 1e-2},
}  # fmt: skip

GEMMA3 = {
    "two-bases": {},
    "linear-scaled-global": {"rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 10000.0}}},
    "pattern-3-final-cap": {"layer_types": None, "sliding_window_pattern": 3,
                            "final_logit_softcapping": 1.5},
    "gqa-1-untied": {"num_key_value_heads": 1, "tie_word_embeddings": False},
}  # fmt: skip


@pytest.mark.parametrize("name", list(GEMMA2))
def test_gemma2_logits_match_on_a_padded_batch(name):
    hf = tiny("Gemma2ForCausalLM", **GEMMA2[name])
    model = from_hf(hf)
    assert isinstance(model, TransformerWrapper)
    assert logits_diff(hf, model) < TOL


@pytest.mark.parametrize("name", list(GEMMA3))
def test_gemma3_logits_match_on_a_padded_batch(name):
    hf = tiny("Gemma3ForCausalLM", **GEMMA3[name])
    model = from_hf(hf)
    assert logits_diff(hf, model) < TOL


@pytest.mark.parametrize("arch", ["Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def test_long_padded_sequences_match(arch):
    """60 tokens, window 4: the sliding layers take the blockwise (banded) kernel."""
    hf = tiny(arch, seed=8)
    model = from_hf(hf)
    assert logits_diff(hf, model, lens=(60, 41)) < TOL


def test_the_layer_pattern_and_windows_are_converted():
    model = from_hf(tiny("Gemma3ForCausalLM", layer_types=None, sliding_window_pattern=3))
    attns = [block.branch for block in model.attn_layers.layers[0::2]]
    assert [a.config.sliding_window for a in attns] == [4, 4, None, 4]
    assert [a.position.theta for a in attns] == [100.0, 100.0, 10000.0, 100.0]
    assert attns[0].config.scale == 12**-0.5


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("Gemma2ForCausalLM", {"attn_logit_softcapping": 2.0, "final_logit_softcapping": 1.5}),
        ("Gemma3ForCausalLM", {}),
    ],
)
def test_greedy_generation_equals_hugging_face(arch, overrides):
    hf = tiny(arch, seed=5, **overrides)
    model = from_hf(hf)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    expected = hf_greedy(hf, prompt, 20)  # 26 tokens: far past the window of 4
    assert torch.equal(our_greedy(model, prompt, 20), expected)


@pytest.mark.parametrize("arch", ["Gemma2Model", "Gemma3TextModel"])
def test_hidden_states_of_the_base_models(arch):
    hf = tiny(arch, seed=2)
    model = from_hf(hf)
    ids, mask = padded_batch(LENS)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask.long()).last_hidden_state
        assert max_diff(model(ids, mask=mask), expected, mask) < TOL


def _breaks(hf, change):
    """The converted model rebuilt with ``change(config_dict)`` (same weights) leaves Hugging
    Face's logits by far more than the tolerance."""
    model = from_hf(hf)
    config = model.config_dict()
    change(config)
    changed = TransformerWrapper.from_config(config).eval()
    changed.load_state_dict(model.state_dict())
    return logits_diff(hf, changed) > 100 * TOL


def test_each_gemma2_feature_matters():
    hf = tiny("Gemma2ForCausalLM", seed=3, attn_logit_softcapping=2.0, final_logit_softcapping=1.5)
    changes = {
        "attention cap": lambda c: c["attn_layers"]["attention"].update(
            softclamp_logits=False, logit_softclamp_value=50.0
        ),
        "final cap": lambda c: c.update(logit_softclamp_value=None),
        "embedding scale": lambda c: c.update(token_emb_scale=None),
        "window": lambda c: c["attn_layers"]["attention"].update(sliding_window=None),
        "query_pre_attn_scalar": lambda c: c["attn_layers"]["attention"].update(scale=None),
    }
    for name, change in changes.items():
        assert _breaks(hf, change), name


def test_each_gemma3_feature_matters():
    hf = tiny("Gemma3ForCausalLM", seed=3)
    positions = lambda c: c["attn_layers"]["positions"]  # noqa: E731
    assert _breaks(hf, lambda c: positions(c).update(rotary_local_theta=10000.0))
    model = from_hf(hf)  # the q/k norm's gains (1 + w) matter
    with torch.no_grad():
        model.attn_layers.layers[0].branch.qk_rmsnorm.k_weight.fill_(1.0)
    assert logits_diff(hf, model) > 100 * TOL


def test_transformers_4_style_gemma3_config():
    """``rope_theta`` + ``rope_local_base_freq`` + ``rope_scaling`` (transformers 4's layout)."""
    hf = tiny("Gemma3ForCausalLM", seed=4, rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 20000.0}})  # fmt: skip
    config = hf.config.to_dict()
    del config["rope_parameters"]
    config.update(rope_theta=20000.0, rope_local_base_freq=50.0,
                  rope_scaling={"rope_type": "linear", "factor": 4.0})  # fmt: skip
    model = _convert(config, "Gemma3ForCausalLM", hf.state_dict(), "t", torch.float32, "cpu")
    assert logits_diff(hf, model) < TOL


@pytest.mark.parametrize("arch", ["Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def test_from_hf_dir_equals_from_hf(tmp_path, arch):
    hf = tiny(arch, seed=7)
    hf.save_pretrained(tmp_path)
    same_parameters(from_hf_dir(tmp_path), from_hf(hf))
    assert supported_architectures()[arch] == "lm"


@pytest.mark.parametrize("arch", ["Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def test_the_tensor_table_reads_back_into_the_checkpoint(arch):
    """Export direction of the table (hf_table.TensorRule.to_hf): each anyformer tensor of the
    converted model gives back the Hugging Face tensors (1 + w - 1: float32 rounding only)."""
    from anyformer.convert.hf_base import HFConfig
    from anyformer.convert.hf_gemma import rules

    hf = tiny(arch, seed=9, attention_bias=True)
    model = from_hf(hf)
    config = HFConfig(hf.config.to_dict(), "Gemma3" if "Gemma3" in arch else "Gemma2")
    expected = {k.removeprefix("model."): v for k, v in hf.state_dict().items()}
    seen = set()
    for rule in rules(config, qk_norm="Gemma3" in arch):
        for name, value in rule.to_hf(model.get_parameter(rule.ours).detach()).items():
            assert value.shape == expected[name].shape, name
            assert (value - expected[name]).abs().max() < 1e-6, name
            seen.add(name)
    assert seen == set(expected) - {"lm_head.weight"}


@pytest.mark.parametrize(
    ("arch", "overrides", "message"),
    [
        ("Gemma2ForCausalLM", {"hidden_activation": "relu"}, "Gemma2 config: option hidden_act"),
        ("Gemma2ForCausalLM", {"layer_types": ["chunked_attention"] * 4},
         "Gemma2 config: option layer_types='chunked_attention'"),
        ("Gemma2ForCausalLM", {"sliding_window": None}, "Gemma2 config: option sliding_window"),
        ("Gemma2ForCausalLM", {"layer_types": ["full_attention"]},
         "Gemma2 config: option layer_types=.*expected 4 entries"),
        ("Gemma2ForCausalLM", {"attn_logit_softcapping": -1.0},
         "Gemma2 config: option attn_logit_softcapping=-1.0"),
        ("Gemma3ForCausalLM", {"attn_logit_softcapping": 50.0},
         "Gemma3 config: option attn_logit_softcapping=50.0 .* ambiguous"),
        ("Gemma3ForCausalLM", {"use_bidirectional_attention": True},
         "Gemma3 config: option use_bidirectional_attention=True"),
        ("Gemma3ForCausalLM", {"rope_parameters": {
            "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1.0}}},
         "Gemma3 config: option rope_parameters=.*sliding_attention layers take plain rotary"),
    ],
)  # fmt: skip
def test_unsupported_options_raise_naming_them(arch, overrides, message):
    hf = tiny(arch)
    config = hf.config.to_dict()
    config.update(overrides)
    with pytest.raises(UnsupportedHFModel, match=message):
        _convert(config, arch, hf.state_dict(), "test", torch.float32, "cpu")


# ------------------------------------------------------------ the options added for Gemma


def test_token_emb_scale_rounds_the_factor_to_the_dtype():
    """Gemma: embeddings * sqrt(d), the factor cast to the embeddings' dtype first."""
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=50, max_seq_len=0, use_abs_pos_emb=False,
                               token_emb_scale=math.sqrt(24),
                               attn_layers=Decoder(dim=24, depth=1, heads=2))  # fmt: skip
    ids = torch.randint(0, 50, (2, 7))
    weight = model.token_emb.emb.weight
    expected = weight.double()[ids] * math.sqrt(24)
    assert (model.token_emb(ids).double() - expected).abs().max() < 1e-5
    model = model.to(torch.bfloat16)
    weight = model.token_emb.emb.weight
    factor = torch.tensor(math.sqrt(24), dtype=torch.bfloat16)
    assert factor.item() != math.sqrt(24)
    assert torch.equal(model.token_emb(ids), weight[ids] * factor)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0.0, ValueError, "token_emb_scale must be > 0, got 0.0"),
        ("2", TypeError, "token_emb_scale must be float | None, got '2'"),
    ],
)
def test_token_emb_scale_errors(value, error, message):
    with pytest.raises(error, match=message):
        TransformerWrapper(num_tokens=10, max_seq_len=8, token_emb_scale=value,
                           attn_layers=Decoder(dim=8, depth=1, heads=2))  # fmt: skip


def _rotary_model(seed, **options):
    torch.manual_seed(seed)
    return TransformerWrapper(num_tokens=40, max_seq_len=128, use_abs_pos_emb=False,
        attn_layers=Decoder(dim=32, depth=3, heads=4, attn_dim_head=8, rotary_pos_emb=True,
                            **options)).eval()  # fmt: skip


def test_rotary_local_theta_equals_rotary_theta_when_every_layer_is_local():
    """Two paths: every layer windowed with rotary_local_theta=L (global base G unused) equals
    the same weights with rotary_theta=L."""
    local = _rotary_model(0, attn_sliding_window=5, rotary_theta=1e6, rotary_local_theta=50.0)
    plain = _rotary_model(0, attn_sliding_window=5, rotary_theta=50.0)
    plain.load_state_dict(local.state_dict())
    ids = torch.randint(0, 40, (2, 90))  # long enough for the banded window kernel
    with torch.no_grad():
        assert max_diff(local(ids), plain(ids)) < 1e-5
        other = _rotary_model(0, attn_sliding_window=5, rotary_theta=1e6)
        other.load_state_dict(local.state_dict())
        assert max_diff(local(ids), other(ids)) > 1e-3  # the local base is used


def test_rotary_local_theta_cached_decoding_equals_the_full_forward():
    model = _rotary_model(1, attn_sliding_window=(4, None), rotary_local_theta=30.0,
                          rotary_scaling="llama3", rotary_scaling_factor=4.0,
                          rotary_original_max_seq_len=16)  # fmt: skip
    ids = torch.randint(0, 40, (2, 14))
    with torch.no_grad():
        full = model(ids)
        _, cache = model(ids[:, :5], return_intermediates=True)
        for t in range(5, 14):
            logits, cache = model(ids[:, : t + 1], cache=cache, return_intermediates=True)
            assert (logits[:, -1] - full[:, t]).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rotary_local_theta": 10.0}, "rotary_local_theta=10.0 .* attn_sliding_window is not set"),
        ({"rotary_local_theta": 0.0, "attn_sliding_window": 4},
         "rotary_local_theta must be > 0, got 0.0"),
        ({"rotary_local_theta": 10.0, "attn_sliding_window": 4, "rotary_xpos": True},
         "rotary_local_theta cannot be combined with rotary_xpos"),
    ],
)  # fmt: skip
def test_rotary_local_theta_errors(options, message):
    with pytest.raises(ValueError, match=message):
        _rotary_model(0, **options)


def test_rotary_local_theta_needs_rotary():
    with pytest.raises(ValueError, match="rotary_local_theta was set but rotary_pos_emb=False"):
        Decoder(dim=16, depth=1, heads=2, attn_sliding_window=4, rotary_local_theta=10.0)
