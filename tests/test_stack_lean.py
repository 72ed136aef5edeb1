"""The decoding loop of a generation session (stack/lean.py) against the blocks it replaces:
the same logits and cached steps over random plain configurations, built from the modules as
they are when the session starts, with weight copies the model never sees."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from anyformer import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper
from anyformer.cache import KVCache
from anyformer.stack import lean
from anyformer.stack.lean import LeanLoop, attach, loop_for

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


def _column_major(t: torch.Tensor) -> bool:
    return t.stride() == (1, t.shape[0])


@settings(max_examples=20, deadline=None)
@given(options=st.fixed_dictionaries(PLAIN), seed=st.integers(0, 2**16))
def test_the_loop_gives_the_blocks_cached_steps(options, seed):
    torch.manual_seed(seed)
    model = _model(**options)
    x = torch.randint(0, 40, (2, 9))
    lean_cache, block_cache = KVCache(), KVCache()
    assert attach(model.attn_layers, lean_cache)
    loop = loop_for(model.attn_layers, lean_cache)
    assert all(_column_major(m.weight) for s in loop.steps for m in s.maps if m is not None)
    assert loop_for(model.attn_layers, block_cache) is None
    with torch.no_grad():
        got = model(x[:, :5], cache=lean_cache)
        torch.testing.assert_close(got, model(x[:, :5], cache=block_cache), atol=1e-5, rtol=0)
        for i in range(5, 9):
            step = x[:, i : i + 1]
            got = model(step, cache=lean_cache, input_not_include_cache=True)
            want = model(step, cache=block_cache, input_not_include_cache=True)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _count_loop_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    run = LeanLoop.__call__

    def counted(self, x, state):
        calls.append(x.shape[1])
        return run(self, x, state)

    monkeypatch.setattr(LeanLoop, "__call__", counted)
    return calls


def test_generation_decodes_through_the_loop_token_for_token_as_the_blocks(monkeypatch):
    torch.manual_seed(3)
    model = _model(rotary_pos_emb=True, attn_kv_heads=2, use_rmsnorm=True, ff_glu=True)
    prompts = torch.randint(0, 40, (3, 4))
    calls = _count_loop_calls(monkeypatch)
    tokens = AutoregressiveWrapper(model).generate(prompts, 24, temperature=0.0)
    assert calls == [4] + [1] * 23  # the prompt, then one token per step
    monkeypatch.setattr("anyformer.generation.session.attach", lambda *a, **k: False)
    blocks = AutoregressiveWrapper(model).generate(prompts, 24, temperature=0.0)
    assert torch.equal(tokens, blocks) and len(calls) == 24


def test_the_copies_stay_within_the_budget_and_short_sessions_make_none(monkeypatch):
    model = _model()
    stack = model.attn_layers
    loop = LeanLoop.build(stack, copy_weights=False)
    to_out = stack.layers[0].branch.to_out
    assert loop.steps[0].maps[1].weight.data_ptr() == to_out.weight.data_ptr()
    total = sum(4 * m.weight.numel() for m in stack.modules() if type(m) is nn.Linear)
    assert total == 2 * 4 * (96 * 32 + 32 * 32 + 128 * 32 + 32 * 128)  # float32 qkv, out, in, out
    monkeypatch.setattr(lean, "COPY_BUDGET_BYTES", total - 1)
    loop = LeanLoop.build(stack)
    assert loop.steps[0].maps[1].weight.data_ptr() == to_out.weight.data_ptr()
    monkeypatch.setattr(lean, "COPY_BUDGET_BYTES", total)
    loop = LeanLoop.build(stack)
    assert loop.steps[0].maps[1].weight.data_ptr() != to_out.weight.data_ptr()
    assert torch.equal(loop.steps[0].maps[1].weight, to_out.weight)


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
    assert LeanLoop.build(Decoder(dim=16, depth=1, heads=2, **option)) is None


def test_plain_stacks_of_every_kind_get_the_loop():
    assert isinstance(LeanLoop.build(Decoder(dim=16, depth=2, heads=2)), LeanLoop)
    assert isinstance(LeanLoop.build(Encoder(dim=16, depth=2, heads=2)), LeanLoop)
    custom = LeanLoop.build(Decoder(dim=16, depth=2, heads=2, custom_layers=("a", "a", "f")))
    assert [s.is_attention for s in custom.steps] == [True, True, False]


class Wrapped(nn.Module):
    """A module around a linear layer that adds a learned map (LoRA-like), exposing `weight`."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.extra = nn.Linear(base.in_features, base.out_features, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.extra(x)


@pytest.mark.parametrize("slot", ["to_out", "proj_out"])
def test_a_session_started_after_wrapping_a_projection_decodes_through_the_wrapper(slot):
    model = _model(rotary_pos_emb=True)
    merged = copy.deepcopy(model)
    for block, twin in zip(model.attn_layers.layers, merged.attn_layers.layers, strict=True):
        if hasattr(block.branch, slot):
            wrapped = Wrapped(getattr(block.branch, slot))
            setattr(block.branch, slot, wrapped)
            sum_map = copy.deepcopy(wrapped.base)
            with torch.no_grad():
                sum_map.weight += wrapped.extra.weight
            setattr(twin.branch, slot, sum_map)
    assert LeanLoop.build(model.attn_layers) is None  # not a plain stack any more
    prompts = torch.randint(0, 40, (2, 4))
    got = AutoregressiveWrapper(model).generate(prompts, 20, temperature=0.0)
    assert torch.equal(got, AutoregressiveWrapper(merged).generate(prompts, 20, temperature=0.0))


def test_hooks_training_and_intermediates_run_the_blocks(monkeypatch):
    """Where the loop would skip a hook or an intermediate, the blocks run."""
    model = _model(rotary_pos_emb=True)
    stack = model.attn_layers
    x = torch.randint(0, 40, (1, 7))
    calls = _count_loop_calls(monkeypatch)
    cache = KVCache()
    attach(stack, cache)
    model(x[:, :2], cache=cache)
    assert calls == [2]
    seen = []
    handle = stack.layers[0].branch.register_forward_hook(lambda *a: seen.append(1))
    model(x[:, 2:3], cache=cache, input_not_include_cache=True)
    assert seen == [1]  # the hook fired: the blocks ran
    handle.remove()
    glob = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    model(x[:, 3:4], cache=cache, input_not_include_cache=True)
    glob.remove()
    model(x[:, 4:5], cache=cache, input_not_include_cache=True, return_intermediates=True)
    model.train()
    model(x[:, 5:6], cache=cache, input_not_include_cache=True)
    model.eval()
    assert calls == [2]
    model(x[:, 6:7], cache=cache, input_not_include_cache=True)
    assert calls == [2, 1]


def test_a_cache_handed_to_the_user_runs_the_current_blocks(monkeypatch):
    model = _model(rotary_pos_emb=True)
    calls = _count_loop_calls(monkeypatch)
    prompt = torch.randint(0, 40, (1, 4))
    _, inter = AutoregressiveWrapper(model).generate(
        prompt, 3, temperature=0.0, return_intermediates=True
    )
    assert calls == [4, 1, 1] and loop_for(model.attn_layers, inter.cache) is None
    block = model.attn_layers.layers[0].branch
    block.to_out = Wrapped(block.to_out)  # changed after the session: the next call sees it
    seen = []
    block.to_out.extra.register_forward_hook(lambda *a: seen.append(1))
    with torch.no_grad():
        step = model(torch.randint(0, 40, (1, 1)), cache=inter.cache, input_not_include_cache=True)
    assert step.shape == (1, 1, 40) and seen == [1] and calls == [4, 1, 1]


@pytest.mark.skipif(not lean.packed_bf16_supported(), reason="no native bf16 on this CPU")
def test_a_bf16_stack_decodes_from_packed_copies_as_the_blocks_do(monkeypatch):
    torch.manual_seed(6)
    model = _model(rotary_pos_emb=True, use_rmsnorm=True, ff_glu=True).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = LeanLoop.build(model.attn_layers)
    assert all(type(m) is lean._Packed for s in loop.steps for m in s.maps if m is not None)
    prompts = torch.randint(0, 40, (1, 4))
    tokens = AutoregressiveWrapper(model).generate(prompts, 70, temperature=0.0)  # copies pay
    monkeypatch.setattr("anyformer.generation.session.attach", lambda *a, **k: False)
    blocks = AutoregressiveWrapper(model).generate(prompts, 70, temperature=0.0)
    assert torch.equal(tokens, blocks)
    after = model.state_dict()
    assert all(
        torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in after
    )
