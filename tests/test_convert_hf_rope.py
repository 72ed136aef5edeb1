"""Hugging Face rope settings -> anyformer rotary keywords (anyformer.convert.hf_rope): the
defaults transformers' modeling_rope_utils applies, transformers 4 and 5 layouts, and errors
that name the option. (Logits against Hugging Face models: test_convert_hf_llama/phi3.)"""

from __future__ import annotations

import math

import pytest

from anyformer.convert import UnsupportedHFModel
from anyformer.convert.hf_base import HFConfig
from anyformer.convert.hf_rope import context_length, rope_keywords


def _config(rope=None, **top):
    data = {"max_position_embeddings": 256, **top}
    if rope is not None:
        data["rope_parameters"] = {"rope_theta": 10000.0, **rope}
    return HFConfig(data, "Llama")


def test_default_and_linear():
    assert rope_keywords(_config({"rope_type": "default"}), 16) == {
        "rotary_pos_emb": True, "rotary_emb_dim": 16, "rotary_theta": 10000.0,
    }  # fmt: skip
    out = rope_keywords(_config({"rope_type": "linear", "factor": 2}), 16)
    assert out["rotary_interpolation_factor"] == 2.0


def test_transformers_4_layout_without_scaling():
    out = rope_keywords(HFConfig({"rope_theta": 500000.0, "rope_scaling": None}, "Llama"), 8)
    assert out["rotary_theta"] == 500000.0 and "rotary_scaling" not in out


def test_llama3_keywords():
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    out = rope_keywords(_config(rope), 64)
    assert out["rotary_scaling"] == "llama3"
    assert out["rotary_original_max_seq_len"] == 8192
    assert (out["rotary_low_freq_factor"], out["rotary_high_freq_factor"]) == (1.0, 4.0)


def test_yarn_defaults_follow_transformers():
    """No factor: max_position_embeddings / original; beta 32 / 1; attention factor
    0.1 ln s + 1; truncate on."""
    out = rope_keywords(_config({"rope_type": "yarn", "original_max_position_embeddings": 64}), 16)
    assert out["rotary_scaling_factor"] == 4.0
    assert (out["rotary_yarn_beta_fast"], out["rotary_yarn_beta_slow"]) == (32.0, 1.0)
    assert out["rotary_attn_factor"] == pytest.approx(0.1 * math.log(4) + 1)
    assert out["rotary_yarn_truncate"] is True


def test_yarn_mscale_ratio():
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
            "mscale": 0.8, "mscale_all_dim": 1.0}  # fmt: skip
    out = rope_keywords(_config(rope), 16)
    expected = (0.1 * 0.8 * math.log(4) + 1) / (0.1 * math.log(4) + 1)
    assert out["rotary_attn_factor"] == pytest.approx(expected)


def test_top_level_original_max_position_embeddings_wins():
    """As transformers' standardize_rope_params (Phi-3 keeps it at the top level)."""
    rope = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}
    out = rope_keywords(_config(rope, original_max_position_embeddings=32), 16)
    assert out["rotary_original_max_seq_len"] == 32


def test_dynamic_measures_against_max_position_embeddings():
    out = rope_keywords(_config({"rope_type": "dynamic", "factor": 2.5}), 16)
    assert out["rotary_original_max_seq_len"] == 256
    assert context_length(256, out) == 640
    assert context_length(256, {"rotary_scaling": "yarn"}) == 256


def test_longrope_defaults():
    rope = {"rope_type": "longrope", "short_factor": [1, 2], "long_factor": [3, 4],
            "original_max_position_embeddings": 16}  # fmt: skip
    out = rope_keywords(_config(rope), 4)
    assert out["rotary_scaling_factor"] == 16.0  # 256 / 16
    assert out["rotary_attn_factor"] == pytest.approx(math.sqrt(1 + math.log(16) / math.log(16)))
    assert out["rotary_short_factor"] == (1.0, 2.0) and out["rotary_long_factor"] == (3.0, 4.0)


def test_partial_rotary_only_where_the_family_honours_it():
    config = _config({"rope_type": "default", "partial_rotary_factor": 0.5})
    assert rope_keywords(config, 16, partial=True)["rotary_emb_dim"] == 8
    with pytest.raises(UnsupportedHFModel, match=r"option partial_rotary_factor=0.5 .*Llama"):
        rope_keywords(config, 16)
    odd = _config({"rope_type": "default", "partial_rotary_factor": 0.2})
    with pytest.raises(UnsupportedHFModel, match="head_dim \\* factor = 3 is not an even"):
        rope_keywords(odd, 16, partial=True)


@pytest.mark.parametrize(
    ("rope", "message"),
    [
        ({"rope_type": "proportional"}, r"rope_parameters\['rope_type'\]='proportional'"),
        ({"rope_type": "default", "mrope_section": [2, 2]},
         r"rope_parameters\['mrope_section'\]=\[2, 2\] .*does not know"),
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0},
         r"rope_parameters\['high_freq_factor'\]=None .*'llama3' requires it"),
        ({"rope_type": "dynamic"}, r"rope_parameters\['factor'\]=None"),
        ({"rope_type": "longrope", "short_factor": [1.0]}, r"rope_parameters\['long_factor'\]"),
    ],
)  # fmt: skip
def test_errors_name_the_option(rope, message):
    with pytest.raises(UnsupportedHFModel, match=message):
        rope_keywords(_config(rope), 16)
