"""The one keyword parser: did-you-mean draws only on the caller's own keywords; configs round
trip through plain dicts."""

from __future__ import annotations

import json

import pytest
import torch

from anyformer import Attention, AutoregressiveWrapper, Decoder, FeedForward, TransformerWrapper
from anyformer.config import StackConfig
from anyformer.config.options import from_dict, to_dict


def test_sub_config_field_names_are_not_keywords():
    # 'feedforward' is StackConfig's field holding the ff_* options, not a keyword: no
    # "Did you mean 'feedforward'?" for the very name that was rejected
    with pytest.raises(TypeError) as info:
        Decoder(dim=16, depth=1, feedforward=1)
    assert "unexpected keyword argument 'feedforward'" in str(info.value)
    assert "Did you mean 'feedforward'" not in str(info.value)
    for name in ("attention", "cross_attention", "norm"):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
            Decoder(dim=16, depth=1, **{name: 1})


def test_wrapper_forward_typo_is_reported_by_the_wrapper_with_its_own_keywords():
    model = TransformerWrapper(
        num_tokens=10, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1, heads=2)
    )
    x = torch.randint(0, 10, (1, 4))
    with pytest.raises(TypeError) as info:
        model(x, retrun_embeddings=True)
    message = str(info.value)
    assert message.startswith("TransformerWrapper.forward got an unexpected keyword")
    assert "Did you mean 'return_embeddings'?" in message
    with pytest.raises(TypeError, match="Did you mean 'context_mask'"):
        model(x, context_msk=None)


@pytest.mark.parametrize(
    ("build", "typo", "owner", "suggestion"),
    [
        (lambda **kw: Attention(16, **kw), "dim_haed", "Attention", "dim_head"),
        (lambda **kw: FeedForward(16, **kw), "gelu", "FeedForward", "glu"),
        (
            lambda **kw: TransformerWrapper(
                num_tokens=4, max_seq_len=4, attn_layers=Decoder(dim=8, depth=1), **kw
            ),
            "tie_embeding",
            "TransformerWrapper",
            "tie_embedding",
        ),
        (lambda **kw: Decoder(dim=8, depth=1, **kw), "norm_esp", "Decoder", "norm_eps"),
    ],
)
def test_each_owner_suggests_from_its_own_keywords(build, typo, owner, suggestion):
    with pytest.raises(
        TypeError,
        match=f"^{owner} got an unexpected keyword argument '{typo}'. Did you mean '{suggestion}'",
    ):
        build(**{typo: True})


def test_autoregressive_wrapper_keyword_typo():
    net = TransformerWrapper(num_tokens=4, max_seq_len=4, attn_layers=Decoder(dim=8, depth=1))
    with pytest.raises(TypeError, match="Did you mean 'pad_value'"):
        AutoregressiveWrapper(net, pad_valu=0)


def test_stack_config_round_trips_through_json():
    stack = Decoder(
        dim=16,
        depth=3,
        heads=2,
        attn_dim_head=4,
        cross_attend=True,
        cross_attn_dim_context=8,
        ff_mult=2.5,
        ff_glu=True,
        norm_eps=1e-6,
        norm_bias=True,
    )
    plain = json.loads(json.dumps(to_dict(stack.config)))
    assert plain["feedforward"]["mult"] == 2.5 and plain["norm"]["norm_eps"] == 1e-6
    assert from_dict(StackConfig, plain) == stack.config


def test_norm_options_reach_every_norm():
    stack = Decoder(dim=16, depth=1, heads=2, norm_eps=1e-3, norm_bias=True)
    norms = [m for m in stack.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3  # two pre-norms and the final norm
    assert all(n.eps == 1e-3 and n.bias is not None for n in norms)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-3)
    torch.testing.assert_close(norms[0].double()(x), expected)
    with pytest.raises(ValueError, match="norm_eps must be > 0, got 0"):
        Decoder(dim=16, depth=1, norm_eps=0.0)


def test_keyword_names_read_a_signature_once_each():
    from anyformer.config.options import keyword_names

    def first(self, x, a=1, *args, b=2, **kwargs):
        return None

    def second(x, /, b=3, c=4):
        return None

    assert keyword_names(first, second, skip=("x",)) == ["a", "b", "c"]
    assert keyword_names(second) == ["b", "c"]  # x is positional-only


def test_stack_forward_keywords_are_its_signature():
    """AttentionLayers reports unknown forward keywords from its own signature."""
    model = Decoder(dim=16, depth=1, heads=2)
    with pytest.raises(TypeError, match=r"'cache_agee'\. Did you mean 'cache_age'\?"):
        model(torch.randn(1, 2, 16), cache_agee=1)


def test_keyword_side_prefixes_every_name_in_config_errors():
    from anyformer.config.options import current_prefix, keyword_prefix, keyword_side

    with keyword_side("dec_"):
        assert current_prefix() == "dec_"
        assert current_prefix("attn_") == "dec_attn_"
        with keyword_prefix("cross_attn_"):
            assert current_prefix("attn_") == "dec_cross_attn_"
        with pytest.raises(ValueError, match="AttentionLayers: dec_norm_eps must be > 0"):
            Decoder(dim=16, depth=1, norm_eps=0.0)
    assert current_prefix("attn_") == "attn_"
    with pytest.raises(ValueError, match="AttentionLayers: norm_eps must be > 0"):
        Decoder(dim=16, depth=1, norm_eps=0.0)
