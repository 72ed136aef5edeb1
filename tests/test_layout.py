"""Column-major linear weights (nn/layout.py): only the storage changes, and cached generation
on the CPU stores the stack's weights that way."""

from __future__ import annotations

import copy

import torch
from torch import nn

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper
from anyformer.nn.layout import store_column_major


def _model(**kw: object) -> TransformerWrapper:
    torch.manual_seed(0)
    stack = Decoder(dim=32, depth=2, heads=4, attn_dim_head=8, rotary_pos_emb=True, ff_glu=True)
    return TransformerWrapper(num_tokens=40, max_seq_len=64, attn_layers=stack, **kw)


def _column_major(t: torch.Tensor) -> bool:
    return t.stride() == (1, t.shape[0])


def test_storage_changes_and_nothing_else():
    model = _model()
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    params = [m.weight for m in linears]
    values = [p.detach().clone() for p in params]
    assert not any(_column_major(p) for p in params)
    assert store_column_major(model) == len(linears) == 2 * (2 + 2) + 1  # qkv, out, in, out; logits
    for param, linear, value in zip(params, linears, values):
        assert linear.weight is param  # the same parameter object (optimizers, ties)
        assert _column_major(param) and param.shape == value.shape
        assert torch.equal(param, value)
    assert store_column_major(model) == 0  # already stored so
    assert model.token_emb.emb.weight.stride() == (32, 1)  # embeddings are not linears


def test_logits_and_a_training_step_do_not_depend_on_the_layout():
    row = _model()
    col = copy.deepcopy(row)
    store_column_major(col)
    x = torch.randint(0, 40, (4, 17))
    torch.testing.assert_close(col(x), row(x), atol=1e-6, rtol=0)
    for model in (row, col):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        AutoregressiveWrapper(model)(x).backward()
        opt.step()
    for (name, a), b in zip(row.named_parameters(), col.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=name)
    # the step updates the weights in place: the layout stays
    assert all(_column_major(m.weight) for m in col.modules() if type(m) is nn.Linear)


def test_cached_generation_stores_the_stack_column_major_and_nothing_else():
    model = _model(tie_embedding=True)
    stack_weights = [m.weight for m in model.attn_layers.modules() if type(m) is nn.Linear]
    prompt = torch.randint(0, 40, (2, 5))
    AutoregressiveWrapper(model).generate(prompt, 4, cache_kv=False)
    assert not any(_column_major(w) for w in stack_weights)  # recomputing: left alone
    expected = AutoregressiveWrapper(copy.deepcopy(model)).generate(
        prompt, 12, temperature=0.0, cache_kv=False
    )
    tokens = AutoregressiveWrapper(model).generate(prompt, 12, temperature=0.0)
    assert torch.equal(tokens, expected)
    assert all(_column_major(w) for w in stack_weights)
    # the tied head is the embedding, which keeps its layout
    assert model.to_logits.weight is model.token_emb.emb.weight
    assert model.token_emb.emb.weight.is_contiguous()


def test_a_model_saved_after_generation_loads_back_bitwise(tmp_path):
    model = _model()
    AutoregressiveWrapper(model).generate(torch.randint(0, 40, (1, 3)), 2)
    assert _column_major(model.attn_layers.layers[0].branch.qkv.to_qkv.weight)
    model.save_pretrained(tmp_path / "m")
    loaded = TransformerWrapper.from_pretrained(tmp_path / "m")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_generating_under_inference_mode_leaves_a_trainable_model():
    model = _model()
    with torch.inference_mode():
        AutoregressiveWrapper(model).generate(torch.randint(0, 40, (1, 3)), 2)
    weight = model.attn_layers.layers[0].branch.qkv.to_qkv.weight
    assert _column_major(weight) and not weight.is_inference()
    loss = AutoregressiveWrapper(model)(torch.randint(0, 40, (2, 9)))
    loss.backward()
    assert weight.grad is not None and weight.grad.shape == (3 * 4 * 8, 32)


def test_meta_weights_are_left_alone():
    with torch.device("meta"):
        linear = nn.Linear(4, 3)
    assert store_column_major(linear) == 0 and linear.weight.is_contiguous()
