"""The stack: one KV-cache slot per attention execution, positions handed to every attention
layer, no cache allocated for intermediates while training."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from anyformer import AutoregressiveWrapper, Decoder, KVCache, TransformerWrapper


def _model(**kw):
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=32,
        max_seq_len=64,
        use_abs_pos_emb=False,
        attn_layers=Decoder(dim=16, depth=2, heads=2, **kw),
    ).eval()


def test_a_block_run_twice_gets_two_cache_slots_and_caches_correctly():
    model = _model()
    stack = model.attn_layers
    stack.set_execution_order((0, 1, 2, 3, 0, 1))  # attention 0 + ff 0 run again at the end
    assert [slot for _, slot in stack.execution_plan] == [0, None, 1, None, 2, None]
    x = torch.randint(0, 32, (2, 12))
    full = model(x)
    # the same computation, written out by hand over the blocks
    h = model.token_emb(x)
    layers = stack.layers
    for index in (0, 1, 2, 3, 0, 1):
        block = layers[index]
        h = h + block.branch(block.pre_norm(h))
    torch.testing.assert_close(full, model.to_logits(stack.final_norm(h)), atol=1e-5, rtol=0)
    cache = KVCache()
    model(x[:, :7], cache=cache)
    assert len(cache.layers) == 3
    for t in range(7, 12):
        step = model(x[:, : t + 1], cache=cache)
        torch.testing.assert_close(step[:, -1], full[:, t], atol=1e-5, rtol=0)


class RecordPositions(nn.Module):
    """A stand-in positional module: records the positions it is handed, changes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, q, k, positions):
        self.seen.append(positions.clone())
        return q, k


def _with_recorders(model):
    recorders = []
    for block in model.attn_layers.layers:
        if block.layer_type == "a":
            block.branch.position = RecordPositions()
            recorders.append(block.branch.position)
    model.attn_layers.set_execution_order(tuple(range(len(model.attn_layers.layers))))
    return recorders


def test_positions_reach_every_attention_layer():
    model = _model()
    recorders = _with_recorders(model)
    x = torch.randint(0, 32, (2, 6))
    cache = KVCache()
    model(x[:, :4], cache=cache)
    model(x[:, :5], cache=cache)
    for rec in recorders:
        assert torch.equal(rec.seen[0], torch.arange(4)[None])
        assert torch.equal(rec.seen[1], torch.tensor([[4]]))


def test_generation_hands_each_row_its_own_positions():
    model = _model()
    recorders = _with_recorders(model)
    lm = AutoregressiveWrapper(model)
    prompts = [torch.randint(1, 32, (n,)) for n in (2, 5)]
    lm.generate(prompts, 3, temperature=0.0)
    seen = recorders[0].seen
    assert torch.equal(seen[0], torch.arange(5)[None])  # prefill, padded to the longest prompt
    assert torch.equal(seen[1], torch.tensor([[2], [5]]))  # each row continues from its length
    assert torch.equal(seen[2], torch.tensor([[3], [6]]))


def test_prepended_embeddings_take_the_first_positions():
    model = _model()
    recorders = _with_recorders(model)
    x = torch.randint(0, 32, (1, 3))
    model(x, prepend_embeds=torch.randn(1, 2, 16), pos=torch.arange(3))
    assert torch.equal(recorders[0].seen[0], torch.tensor([[0, 1, 2, 3, 4]]))


def test_intermediates_while_training_allocate_no_cache():
    model = _model().train()
    _, inter = model(torch.randint(0, 32, (1, 5)), return_intermediates=True)
    assert inter.cache is None
    model.eval()
    _, inter = model(torch.randint(0, 32, (1, 5)), return_intermediates=True)
    assert inter.cache is not None and inter.cache.length == 5


# --- the stack follows its current modules (nothing is captured at construction) ------------


class LoRA(nn.Module):
    """A LoRA-style adapter around a linear layer (as PEFT wraps one): base(x) + up(down(x)).
    Like PEFT's, it exposes the base layer's ``weight`` and ``bias``, which alone are not the
    layer's map."""

    def __init__(self, base: nn.Linear, rank: int = 2) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.up.weight)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))

    def merged(self) -> nn.Linear:
        """The plain linear layer computing the same map."""
        linear = copy.deepcopy(self.base)
        with torch.no_grad():
            linear.weight += self.up.weight @ self.down.weight
        return linear


def _rotary_model() -> TransformerWrapper:
    torch.manual_seed(0)
    stack = Decoder(dim=16, depth=2, heads=2, rotary_pos_emb=True, ff_glu=True)
    return TransformerWrapper(num_tokens=32, max_seq_len=64, attn_layers=stack).eval()


def _linear_slots(model: TransformerWrapper, which: str) -> list[tuple[nn.Module, str]]:
    """(owner, attribute) of every linear layer of one kind in the stack."""
    slots = []
    for block in model.attn_layers.layers:
        branch = block.branch
        if which == "to_qkv" and block.layer_type == "a":
            slots.append((branch.qkv, "to_qkv"))
        elif which == "to_out" and block.layer_type == "a":
            slots.append((branch, "to_out"))
        elif which in ("proj_in", "proj_out") and block.layer_type == "f":
            slots.append((branch, which))
    return slots


@pytest.mark.parametrize("which", ["to_qkv", "to_out", "proj_in", "proj_out"])
def test_an_adapter_wrapped_around_a_projection_takes_effect_in_eval(which):
    model = _rotary_model()
    merged = copy.deepcopy(model)
    for (owner, name), (twin, _) in zip(
        _linear_slots(model, which), _linear_slots(merged, which), strict=True
    ):
        adapter = LoRA(getattr(owner, name))
        setattr(owner, name, adapter)
        setattr(twin, name, adapter.merged())
    x = torch.randint(0, 32, (2, 7))
    with torch.no_grad():
        want = merged(x)
        assert (want - _rotary_model()(x)).abs().max() > 0.1  # the adapters change the logits
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.train()(x), want, atol=1e-5, rtol=0)  # dropout is 0
        model.eval()
        # cached decoding runs through the adapters too
        cache = KVCache()
        model(x[:, :4], cache=cache)
        for t in range(4, 7):
            step = model(x[:, t : t + 1], cache=cache, input_not_include_cache=True)
            torch.testing.assert_close(step[:, -1], want[:, t], atol=1e-5, rtol=0)


def _blocks_by_hand(model: TransformerWrapper, x: torch.Tensor) -> torch.Tensor:
    """Logits of a stack without positions, walking its blocks by hand (pre-norm, residual)."""
    h = model.token_emb(x)
    for block in model.attn_layers.layers:
        h = h + block.branch(block.pre_norm(h))
    return model.to_logits(model.attn_layers.final_norm(h))


def test_a_dynamically_quantized_model_runs_its_quantized_layers_in_eval():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        model = torch.ao.quantization.quantize_dynamic(_model(), {nn.Linear}, dtype=torch.qint8)
    to_out = model.attn_layers.layers[0].branch.to_out
    assert type(to_out) is not nn.Linear  # replaced by a quantized module
    x = torch.randint(0, 32, (2, 9))
    with torch.no_grad():
        got = model.eval()(x)
        assert got.shape == (2, 9, 32)
        torch.testing.assert_close(got, _blocks_by_hand(model, x), atol=1e-6, rtol=0)
        # the quantized weights are used: the float model differs by the rounding
        assert (got - _model()(x)).abs().max() > 1e-4


@pytest.mark.parametrize("how", ["slice", "del"])
def test_a_truncated_stack_runs_its_remaining_layers(how):
    torch.manual_seed(0)
    deep = TransformerWrapper(
        num_tokens=32, max_seq_len=64, attn_layers=Decoder(dim=16, depth=4, heads=2)
    ).eval()
    stack = deep.attn_layers
    if how == "slice":
        stack.layers = stack.layers[:4]  # as x-transformers users do
    else:
        del stack.layers[4:]
    shallow = TransformerWrapper(
        num_tokens=32, max_seq_len=64, attn_layers=Decoder(dim=16, depth=2, heads=2)
    ).eval()
    shallow.load_state_dict(deep.state_dict())
    x = torch.randint(0, 32, (2, 9))
    with torch.no_grad():
        want = shallow(x)
        torch.testing.assert_close(deep(x), want, atol=1e-6, rtol=0)
        torch.testing.assert_close(deep.train()(x), want, atol=1e-6, rtol=0)
    deep.eval()
    assert len(stack.execution_plan) == 4
    prompt = torch.randint(0, 32, (1, 3))
    greedy = AutoregressiveWrapper(deep).generate(prompt, 6, temperature=0.0)
    assert torch.equal(greedy, AutoregressiveWrapper(shallow).generate(prompt, 6, temperature=0.0))


def test_a_custom_order_over_a_truncated_stack_raises_in_train_and_eval():
    stack = _model(layers_execute_order=(0, 1, 2, 3, 0, 1)).attn_layers
    stack.layers = stack.layers[:2]
    x = torch.randn(1, 3, 16)
    for mode in (True, False):
        stack.train(mode)
        with pytest.raises(
            ValueError, match=r"indexes layers up to 3, but self.layers now holds 2"
        ):
            stack(x)
    stack.set_execution_order((0, 1, 0, 1))
    assert [slot for _, slot in stack.execution_plan] == [0, None, 1, None]
    with pytest.raises(ValueError, match=r"order must hold indices into self.layers"):
        stack.set_execution_order((0, 2))


def test_dropout_set_after_construction_takes_effect_in_training():
    model = _model().train()
    for block in model.attn_layers.layers:
        if block.layer_type == "f":
            block.branch.dropout.p = 1.0  # every hidden unit dropped: the branch adds its bias
    x = torch.randint(0, 32, (2, 5))
    h = model.token_emb(x)
    for block in model.attn_layers.layers:
        if block.layer_type == "f":
            h = h + block.branch.proj_out.bias
        else:
            h = h + block.branch(block.pre_norm(h))
    want = model.to_logits(model.attn_layers.final_norm(h))
    torch.testing.assert_close(model(x), want, atol=1e-6, rtol=0)
    model.eval()  # dropout off: the full branch again
    assert (model(x) - want).abs().max() > 1e-3


def test_a_norm_or_hook_put_in_a_block_slot_after_construction_takes_effect():
    model = _model()
    torch.manual_seed(1)
    for block in model.attn_layers.layers:
        block.post_norm = nn.LayerNorm(16)
        nn.init.normal_(block.post_norm.weight)
    x = torch.randint(0, 32, (2, 5))
    h = model.token_emb(x)
    for block in model.attn_layers.layers:
        h = block.post_norm(h + block.branch(block.pre_norm(h)))
    want = model.to_logits(model.attn_layers.final_norm(h))
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=0)
    seen = []
    residual = model.attn_layers.layers[1].residual
    residual.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    fresh = _model()
    fresh.attn_layers.layers[1].residual = residual
    fresh(x)
    assert seen == [(2, 5, 16)]  # the residual runs as a module: its hook fires
