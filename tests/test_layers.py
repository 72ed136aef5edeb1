"""The stack: one KV-cache slot per attention execution, positions handed to every attention
layer, no cache allocated for intermediates while training."""

from __future__ import annotations

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
    stack._set_execution_order((0, 1, 2, 3, 0, 1))  # attention 0 + ff 0 run again at the end
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
    model.attn_layers._set_execution_order(tuple(range(len(model.attn_layers.layers))))
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
