"""Compiled decoding (generate(compile=True)): the same tokens as eager cached decoding, one
compilation per prompt bucket, no graph breaks on the presets, weights read at every call.

Most tests trace with dynamo's "eager" backend (the captured graph runs as it was traced: what
is tested is the static cache and the tracing, in seconds); one test runs inductor itself."""

import types
import warnings

import pytest
import torch
import torch._dynamo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper, presets
from anyformer.cache import StaticCache
from anyformer.generation import compiled as compiled_module
from anyformer.generation.compiled import CompiledStepper, bucket
from anyformer.generation.session import _forward
from anyformer.generation.steppers import CachedStepper

EAGER = {"backend": "eager"}

CONFIGS = {
    "default": dict(),  # learned absolute positions
    "rotary_gqa": dict(rotary_pos_emb=True, attn_kv_heads=1),
    "alibi": dict(alibi_pos_bias=True),
    # options that read the attention logits or prepend keys, over the masked static columns
    "mixed": dict(
        rel_pos_bias=True,
        attn_sparse_topk=3,
        attn_talking_heads=True,
        attn_num_mem_kv=2,
        residual_attn=True,
        layers_execute_order=(0, 1, 0),
    ),
}


def _model(name: str, seed: int = 0, depth: int = 2) -> TransformerWrapper:
    torch.manual_seed(seed)
    stack = Decoder(dim=32, depth=depth, heads=2, attn_dim_head=16, **CONFIGS[name])
    return TransformerWrapper(
        num_tokens=64, max_seq_len=64, use_abs_pos_emb=name == "default", attn_layers=stack
    ).eval()


@pytest.fixture(scope="module")
def models() -> dict[str, TransformerWrapper]:
    return {name: _model(name) for name in CONFIGS}


class _Counting:
    """A torch.compile backend that counts the graphs it is given (and runs them as traced)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, inputs: list) -> object:
        self.graphs += 1
        return gm.forward


def _ragged_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randint(1, 64, (2, 9)), torch.tensor([9, 2])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_logits_match_eager_cached_decoding(models, name):
    """Prefill and 12 decode steps of a right-padded batch: logits within 1e-5 of the plain
    KV-cached stepper's, and the same greedy tokens."""
    net = models[name]
    prompts, lens = _ragged_prompts()
    with torch.no_grad():
        plain = CachedStepper(_forward(net), prompts, lens, 13, None, {})
        fast = CompiledStepper(net, prompts, lens, 13, None, {}, options=EAGER)
        expected, got = plain.start(), fast.start()
        for _ in range(12):
            assert torch.allclose(got, expected, atol=1e-5, rtol=0)
            token = expected.argmax(-1)
            assert torch.equal(got.argmax(-1), token)
            expected = plain.feed(token[:, None])[:, -1]
            got = fast.feed(token[:, None])[:, -1]
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_generate_compiled_greedy_tokens_equal_eager(models, name):
    """Prompts of two lengths with an eos token, and the stream of the same call (the shapes of
    the test above: its compiled steps are reused)."""
    lm = AutoregressiveWrapper(models[name])
    prompts, lens = _ragged_prompts()
    expected = lm.generate(prompts, 13, temperature=0.0, prompt_lens=lens, eos_token=7)
    got = lm.generate(prompts, 13, temperature=0.0, prompt_lens=lens, eos_token=7, compile=EAGER)
    assert got.shape == expected.shape == (2, 13)
    assert torch.equal(got, expected)
    plain = lm.generate(prompts, 13, temperature=0.0, prompt_lens=lens)
    streamed = lm.stream(prompts, 13, temperature=0.0, prompt_lens=lens, compile=EAGER)
    assert torch.equal(torch.stack(list(streamed), dim=1), plain)


def test_inductor_greedy_tokens_and_logits_equal_eager(monkeypatch):
    """torch.compile's default backend (inductor) on a one-layer default decoder, batch 1, with
    column-major weight copies (made here for a session of any length)."""
    monkeypatch.setattr(compiled_module, "COPY_FROM_STEPS", 1)
    net = _model("default", seed=3, depth=1)
    torch.manual_seed(3)
    prompt = torch.randint(1, 64, (1, 6))
    with torch.no_grad():
        plain = CachedStepper(_forward(net), prompt, None, 8, None, {})
        fast = CompiledStepper(net, prompt, None, 8, None, {}, options={})
        assert fast.weights and all(w.stride(0) == 1 for w in fast.weights.values())
        expected, got = plain.start(), fast.start()
        for _ in range(7):
            assert torch.allclose(got, expected, atol=1e-5, rtol=0)
            token = expected.argmax(-1)
            expected, got = plain.feed(token[:, None])[:, -1], fast.feed(token[:, None])[:, -1]
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    lm = AutoregressiveWrapper(net)
    assert torch.equal(
        lm.generate(prompt, 8, temperature=0.0, compile=True),
        lm.generate(prompt, 8, temperature=0.0),
    )


def test_decode_step_compiles_once_for_prompts_in_one_bucket():
    """Prompts of 5 and 11 tokens (bucket 16), 20 tokens each: one prefill graph and one decode
    graph in all; the second call compiles nothing."""
    lm = AutoregressiveWrapper(_model("rotary_gqa", seed=4))
    backend = _Counting()
    torch.manual_seed(4)
    for n, graphs_after in ((5, 2), (11, 2)):
        prompt = torch.randint(1, 64, (1, n))
        got = lm.generate(prompt, 20, temperature=0.0, compile={"backend": backend})
        assert torch.equal(got, lm.generate(prompt, 20, temperature=0.0))
        assert backend.graphs == graphs_after


_BUCKET_BACKEND = _Counting()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lens=st.lists(st.integers(1, 16), min_size=2, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_any_prompt_lengths_in_the_bucket_decode_exactly_without_recompiling(models, lens, seed):
    """Two rows of any lengths in 1..16 (bucket 16), 12 tokens: the eager tokens, and the two
    graphs compiled for the first example serve every later one."""
    lm = AutoregressiveWrapper(models["alibi"])
    torch.manual_seed(seed)
    prompts = [torch.randint(1, 64, (n,)) for n in lens]
    got = lm.generate(prompts, 12, temperature=0.0, compile={"backend": _BUCKET_BACKEND})
    assert torch.equal(got, lm.generate(prompts, 12, temperature=0.0))
    assert _BUCKET_BACKEND.graphs == 2


def _fresh(fn: types.FunctionType) -> types.FunctionType:
    """A copy with its own code object (dynamo's cache and limits are per code object)."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__)


def _tiny_preset(name: str) -> TransformerWrapper:
    keywords = presets.PRESETS[name][0](num_tokens=64, max_seq_len=64)
    keywords.update(dim=32, depth=2, heads=4, attn_dim_head=8, ff_inner_dim=64)
    if "rotary_emb_dim" in keywords:
        keywords.update(rotary_emb_dim=8, attn_kv_heads=2)
    wrapper, stack = presets.split(name, keywords)
    return TransformerWrapper(**wrapper, attn_layers=Decoder(**stack)).eval()


@pytest.mark.parametrize("name", [n for n, v in presets.PRESETS.items() if v[2] == "Decoder"])
def test_preset_prefill_and_decode_steps_are_one_graph(name):
    net = _tiny_preset(name)
    assert compiled_module.unsupported(net, {}) is None
    shapes = compiled_module._slot_shapes(net)
    cache = StaticCache(2, 32, shapes, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        cache.begin_prefill()
        tokens, last = torch.randint(0, 64, (2, 16)), torch.tensor([15, 9])
        prefill = torch._dynamo.explain(_fresh(compiled_module._prefill))(net, cache, tokens, last)
        cache.begin_decode()
        token, pos = torch.randint(0, 64, (2, 1)), torch.tensor([16, 10])
        copies = compiled_module.column_major(net, 2, compiled_module.COPY_FROM_STEPS)
        assert copies  # the step multiplies by the column-major copies
        explain = torch._dynamo.explain(_fresh(compiled_module._decode))
        decode = explain(net, copies, cache, token, pos)
    for explained in (prefill, decode):
        assert (explained.graph_count, explained.graph_break_count) == (1, 0)
        assert [str(r.reason) for r in explained.break_reasons] == []


def test_weights_loaded_after_a_compiled_generate_are_used():
    net = _model("alibi", seed=5)
    lm = AutoregressiveWrapper(net)
    prompt = torch.randint(1, 64, (1, 7))
    before = lm.generate(prompt, 12, temperature=0.0, compile=EAGER)
    torch.manual_seed(6)
    net.load_state_dict({k: torch.randn_like(v) for k, v in net.state_dict().items()})
    after = lm.generate(prompt, 12, temperature=0.0, compile=EAGER)
    assert torch.equal(after, lm.generate(prompt, 12, temperature=0.0))
    assert not torch.equal(after, before)  # the new weights decode differently


def test_a_truncated_stack_after_a_compiled_generate_is_followed():
    net = _model("rotary_gqa", seed=9)
    lm = AutoregressiveWrapper(net)
    prompt = torch.randint(1, 64, (1, 5))
    before = lm.generate(prompt, 8, temperature=0.0, compile=EAGER)
    del net.attn_layers.layers[-1]  # the last block (a feedforward) goes
    after = lm.generate(prompt, 8, temperature=0.0, compile=EAGER)
    assert torch.equal(after, lm.generate(prompt, 8, temperature=0.0))
    assert not torch.equal(after, before)
    # decode steps after a session's first skip guards only inside the step: checked again here
    assert torch._dynamo.eval_frame._stance.skip_guard_eval_unsafe is False


def test_compiled_generate_leaves_the_model_unchanged():
    net = _model("rotary_gqa", seed=7)
    state = {k: (v.clone(), v.stride(), v.dtype) for k, v in net.state_dict().items()}
    attributes = set(vars(net)) | {k for m in net.modules() for k in vars(m)}
    AutoregressiveWrapper(net).generate(torch.randint(1, 64, (1, 5)), 6, compile=EAGER)
    after = net.state_dict()
    assert list(after) == list(state)
    for key, (value, stride, dtype) in state.items():
        assert torch.equal(after[key], value) and after[key].stride() == stride
        assert after[key].dtype == dtype
    assert set(vars(net)) | {k for m in net.modules() for k in vars(m)} == attributes


def test_column_major_copies_equal_the_weights_and_leave_them_unchanged():
    net = _model("rotary_gqa", seed=10)
    steps = compiled_module.COPY_FROM_STEPS
    copies = compiled_module.column_major(net, 2, steps)
    linears = {f"{n}.weight": m for n, m in net.named_modules() if type(m) is torch.nn.Linear}
    assert set(copies) == set(linears) and len(copies) == 9  # 2 x 4 in the blocks, to_logits
    for name, copy in copies.items():
        weight = linears[name].weight
        assert torch.equal(copy, weight) and copy.stride() == (1, weight.shape[0])
        assert copy.data_ptr() != weight.data_ptr() and weight.is_contiguous()
    assert compiled_module.column_major(net, 3, steps) == {}  # more rows than COPY_UP_TO_ROWS
    assert compiled_module.column_major(net, 1, steps - 1) == {}  # too short a session
    assert compiled_module.column_major(_model("rotary_gqa").double(), 1, steps) == {}


def test_copies_are_graph_inputs_and_weights_loaded_later_are_used(monkeypatch):
    """Two sessions with column-major copies: loading new weights in between recompiles
    nothing, and each session gives the eager tokens of the weights it started with."""
    monkeypatch.setattr(compiled_module, "COPY_FROM_STEPS", 1)
    net = _model("rotary_gqa", seed=11)
    lm, backend = AutoregressiveWrapper(net), _Counting()
    prompt = torch.randint(1, 64, (1, 6))

    def greedy(**compile: object) -> torch.Tensor:
        out = lm.generate(prompt, 16, temperature=0.0, **compile)  # type: ignore[arg-type]
        assert isinstance(out, torch.Tensor)
        return out

    before = greedy(compile={"backend": backend})
    assert torch.equal(before, greedy())
    torch.manual_seed(12)
    net.load_state_dict({k: torch.randn_like(v) for k, v in net.state_dict().items()})
    after = greedy(compile={"backend": backend})
    assert torch.equal(after, greedy())
    assert not torch.equal(after, before) and backend.graphs == 2


@pytest.mark.parametrize(
    ("extra", "call", "named"),
    [
        (dict(attn_max_attend_past=4), {}, "attn_max_attend_past"),
        (dict(rotary_pos_emb=True, rotary_xpos=True), {}, "rotary_xpos (xPos)"),
        (dict(shift_tokens=1), {}, "shift_tokens (token shift)"),
        ({}, dict(cache_kv=False), "cache_kv=False"),
    ],
)
def test_unsupported_options_warn_once_and_decode_eagerly(extra, call, named):
    net = TransformerWrapper(
        num_tokens=64, max_seq_len=64, attn_layers=Decoder(dim=32, depth=1, heads=2, **extra)
    )
    lm = AutoregressiveWrapper(net)
    prompt = torch.randint(1, 64, (1, 5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = lm.generate(prompt, 6, temperature=0.0, compile=True, **call)
        lm.generate(prompt, 6, temperature=0.0, compile=True, **call)
    messages = [str(w.message) for w in caught if "compile=True" in str(w.message)]
    assert messages == [
        f"generate(compile=True): compiled decoding does not support {named}; decoding "
        "without compiling"
    ]
    assert torch.equal(got, lm.generate(prompt, 6, temperature=0.0, **call))


class _FailingFrom(_Counting):
    """A backend whose `first`-th graph and later ones fail to compile (0: prefill, 1: decode)."""

    def __init__(self, first: int) -> None:
        super().__init__()
        self.first = first

    def __call__(self, gm: torch.fx.GraphModule, inputs: list) -> object:
        self.graphs += 1
        if self.graphs > self.first:
            raise RuntimeError("no C++ compiler here")
        return gm.forward


@pytest.mark.parametrize("first", [0, 1])
def test_a_failed_compile_warns_once_and_decodes_eagerly(first):
    """Compiling the prefill (first=0) or the decode step (first=1) fails: the session goes on
    with the eager KV-cached stepper, replaying what it had computed, with the same tokens."""
    lm = AutoregressiveWrapper(_model("rotary_gqa", seed=8))
    prompt = torch.randint(1, 64, (2, 6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = lm.generate(prompt, 9, temperature=0.0, compile={"backend": _FailingFrom(first)})
    messages = [str(w.message) for w in caught if "compile=True" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith("generate(compile=True): compiling failed (BackendCompilerFailed")
    assert messages[0].endswith("; decoding without compiling")
    assert torch.equal(got, lm.generate(prompt, 9, temperature=0.0))


def test_compile_argument_is_checked():
    lm = AutoregressiveWrapper(_model("default"))
    prompt = torch.randint(1, 64, (1, 4))
    with pytest.raises(TypeError, match=r"compile must be True, False or a dict .* got 'yes'"):
        lm.generate(prompt, 2, compile="yes")
    with pytest.raises(ValueError, match=r"compile: 'fullgraph' is not a torch.compile keyword"):
        lm.generate(prompt, 2, compile={"fullgraph": False})


@pytest.mark.parametrize(
    ("n", "limit", "width"), [(1, None, 16), (16, None, 16), (17, None, 32), (17, 20, 20)]
)
def test_prompt_bucket(n, limit, width):
    assert bucket(n, limit) == width
