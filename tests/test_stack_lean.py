"""The lean layer loop (stack/lean.py) against the blocks it replaces: the same logits and the
same cached decoding, over random plain configurations; the blocks wherever it would differ."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anyformer import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper
from anyformer.cache import KVCache
from anyformer.stack.lean import LeanLoop

PLAIN = {
    "rotary_pos_emb": st.booleans(),
    "attn_kv_heads": st.sampled_from([None, 1, 2]),
    "use_rmsnorm": st.booleans(),
    "ff_glu": st.booleans(),
    "ff_swish": st.booleans(),
    "ff_no_bias": st.booleans(),
    "attn_qkv_bias": st.booleans(),
    "attn_qk_norm": st.booleans(),
    "alibi_pos_bias": st.booleans(),
    "ff_post_act_ln": st.booleans(),
}


def _model(**kw: object) -> TransformerWrapper:
    if kw.get("alibi_pos_bias") and kw.get("rotary_pos_emb"):
        kw["rotary_pos_emb"] = False  # two relative schemes at once are refused
    stack = Decoder(dim=32, depth=2, heads=4, attn_dim_head=8, **kw)
    return TransformerWrapper(num_tokens=40, max_seq_len=64, attn_layers=stack).eval()


def _without_lean(model: TransformerWrapper) -> TransformerWrapper:
    """The same model (shared weights) that always runs its blocks."""
    import copy

    twin = copy.copy(model)
    stack = copy.copy(model.attn_layers)
    stack.lean = None
    twin.attn_layers = stack
    return twin


@settings(max_examples=20, deadline=None)
@given(options=st.fixed_dictionaries(PLAIN), seed=st.integers(0, 2**16))
def test_lean_loop_gives_the_blocks_logits_and_cached_steps(options, seed):
    torch.manual_seed(seed)
    model = _model(**options)
    assert model.attn_layers.lean is not None
    blocks = _without_lean(model)
    x = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(x), blocks(x), atol=1e-6, rtol=0)
        # one prompt, then tokens one at a time through a KV cache
        lean_cache, block_cache = KVCache(), KVCache()
        model(x[:, :5], cache=lean_cache)
        blocks(x[:, :5], cache=block_cache)
        for i in range(5, 9):
            step = x[:, i : i + 1]
            got = model(step, cache=lean_cache, input_not_include_cache=True)
            want = blocks(step, cache=block_cache, input_not_include_cache=True)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_greedy_generation_is_token_for_token_the_same():
    torch.manual_seed(3)
    model = _model(rotary_pos_emb=True, attn_kv_heads=2, use_rmsnorm=True, ff_glu=True)
    prompts = torch.randint(0, 40, (3, 4))
    lean = AutoregressiveWrapper(model).generate(prompts, 24, temperature=0.0)
    blocks = AutoregressiveWrapper(_without_lean(model)).generate(prompts, 24, temperature=0.0)
    assert torch.equal(lean, blocks)


@pytest.mark.parametrize(
    "option",
    [
        {"sandwich_norm": True},
        {"residual_attn": True},
        {"macaron": True},
        {"cross_attend": True},
        {"pre_norm": False},
        {"gate_residual": True},
        {"scale_residual": True},
        {"shift_tokens": 1},
        {"attn_num_mem_kv": 2},
        {"attn_talking_heads": True},
        {"attn_gate_values": True},
        {"attn_head_scale": True},
        {"resi_dual": True},
        {"attn_max_attend_past": 4},
    ],
    ids=lambda o: next(iter(o)),
)
def test_stacks_with_other_blocks_keep_their_blocks(option):
    assert Decoder(dim=16, depth=1, heads=2, **option).lean is None


def test_plain_stacks_of_every_kind_get_the_loop():
    assert isinstance(Decoder(dim=16, depth=2, heads=2).lean, LeanLoop)
    assert isinstance(Encoder(dim=16, depth=2, heads=2).lean, LeanLoop)
    custom = Decoder(dim=16, depth=2, heads=2, custom_layers=("a", "a", "f"))
    assert [s.is_attention for s in custom.lean.steps] == [True, True, False]


def test_hooks_training_and_intermediates_run_the_blocks(monkeypatch):
    """Where the loop would skip a hook, dropout or an intermediate, the blocks run."""
    model = _model(rotary_pos_emb=True)
    stack = model.attn_layers
    x = torch.randint(0, 40, (1, 6))
    calls = []

    def fail(*args: object) -> None:
        calls.append("lean")
        raise AssertionError("the lean loop ran")

    monkeypatch.setattr(LeanLoop, "__call__", fail)
    with pytest.raises(AssertionError, match="the lean loop ran"):
        model(x)  # eval, no hooks: the loop
    seen = []
    handle = stack.layers[0].branch.register_forward_hook(lambda *a: seen.append(1))
    model(x)
    assert seen == [1]  # the hook fired: the blocks ran
    handle.remove()
    glob = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    model(x)
    glob.remove()
    model(x, return_intermediates=True)
    model.train()
    model(x)
    assert calls == ["lean"]
