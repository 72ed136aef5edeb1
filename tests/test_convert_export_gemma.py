"""anyformer -> Hugging Face Gemma 3 text (``Gemma3ForCausalLM`` / ``Gemma3TextModel``): folders
written by ``to_hf_dir`` load in ``transformers`` with the same outputs and read back bitwise;
what Gemma 3 cannot hold is refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import TOL, VOCAB, hf_greedy, max_diff, our_greedy, padded_batch, same_parameters

from anyformer import Decoder, TransformerWrapper
from anyformer.convert import from_hf_dir, to_hf, to_hf_dir

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)

_GEMMA3 = dict(
    dim=32, depth=4, heads=4, attn_kv_heads=2, attn_dim_head=8, use_rmsnorm=True, norm_eps=1e-6,
    sandwich_norm=True, ff_glu=True, ff_gelu_tanh=True, ff_inner_dim=48, ff_no_bias=True,
    rotary_pos_emb=True, rotary_theta=10000.0, rotary_local_theta=100.0,
    attn_sliding_window=(4, None), attn_scale=12**-0.5, attn_qk_rmsnorm=True,
    attn_qk_rmsnorm_eps=1e-6,
)  # fmt: skip


def _gemma3(wrapper: dict | None = None, **overrides) -> TransformerWrapper:
    options = {"tie_embedding": True, "token_emb_scale": 32**0.5, **(wrapper or {})}
    return TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=128,
        use_abs_pos_emb=False,
        **options,
        attn_layers=Decoder(**{**_GEMMA3, **overrides}),
    )


MODELS = {
    "two-bases-tied": (lambda: _gemma3(), "Gemma3ForCausalLM"),
    "linear-global-untied-final-cap": (
        lambda: _gemma3(
            {"tie_embedding": False, "logit_softclamp_value": 1.5},
            rotary_interpolation_factor=8.0,
        ),
        "Gemma3ForCausalLM",
    ),
    "one-base-mha": (
        lambda: _gemma3(rotary_local_theta=None, attn_kv_heads=None),
        "Gemma3ForCausalLM",
    ),
    "hidden": (lambda: _gemma3({"return_only_embed": True, "tie_embedding": False}),
               "Gemma3TextModel"),
}  # fmt: skip


def _random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random; norm gains >= 0.5 (Gemma writes g - 1: exact there), each q/k
    norm one gain for all heads (Gemma 3 has one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
            if "norm" in name or name.endswith(("q_weight", "k_weight")):
                p.clamp_(min=0.5)
            if name.endswith(("q_weight", "k_weight")):
                p.copy_(p[:1].expand_as(p))
    return model.eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_transformers_loads_the_folder_with_the_same_outputs(name, tmp_path):
    build, arch = MODELS[name]
    model = _random(build())
    folder = to_hf_dir(model, tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["architectures"] == [arch]
    auto = transformers.AutoModelForCausalLM if arch.endswith("LM") else transformers.AutoModel
    hf = auto.from_pretrained(folder).eval()
    assert type(hf).__name__ == arch
    ids, mask = padded_batch(vocab=VOCAB)  # 12 tokens: three times the window
    with torch.no_grad():
        out = hf(ids, attention_mask=mask.long())
        expected = out.logits if arch.endswith("LM") else out.last_hidden_state
        got = model(ids, mask=mask)
    assert max_diff(got, expected, mask) < TOL


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_gives_bitwise_equal_parameters(name, tmp_path):
    model = _random(MODELS[name][0]())
    same_parameters(model, from_hf_dir(to_hf_dir(model, tmp_path / "hf")))


def test_greedy_continuations_match_in_transformers(tmp_path):
    model = _random(_gemma3(), seed=3)
    hf = transformers.AutoModelForCausalLM.from_pretrained(to_hf_dir(model, tmp_path / "hf"))
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(4))
    assert torch.equal(our_greedy(model, prompt, 12), hf_greedy(hf.eval(), prompt, 12))


def test_the_local_base_is_written_for_the_sliding_layers():
    config, _ = to_hf(_gemma3())
    assert config["model_type"] == "gemma3_text"
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 2
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 100.0
    assert config["rope_parameters"]["full_attention"]["rope_theta"] == 10000.0
    assert config["query_pre_attn_scalar"] == 12 and isinstance(
        config["query_pre_attn_scalar"], int
    )


def test_a_scale_without_an_integer_scalar_is_refused_by_name():
    with pytest.raises(ValueError, match=r"attn_scale=0\.3 \(Gemma 3 needs n \*\* -0\.5"):
        to_hf(_gemma3(attn_scale=0.3), family="gemma3")


def test_per_head_qk_gains_are_refused():
    model = _random(_gemma3())
    with torch.no_grad():
        model.attn_layers.layers[0].branch.qk_rmsnorm.q_weight[1] += 0.5
    with pytest.raises(ValueError, match="different attn_qk_rmsnorm gain per head"):
        to_hf(model)


def test_attention_soft_caps_are_refused_by_name():
    model = _gemma3(attn_softclamp_logits=True, attn_logit_softclamp_value=50.0)
    with pytest.raises(ValueError, match=r"attn_softclamp_logits=True \(Gemma3 needs False\)"):
        to_hf(model, family="gemma3")


def test_gemma2_models_still_export_as_gemma2():
    model = _gemma3(attn_qk_rmsnorm=False, attn_qk_rmsnorm_eps=0.0, rotary_local_theta=None)
    assert to_hf(model)[0]["model_type"] == "gemma2"
