"""torch.compile readiness: the public forward, the training loss and one cached decode step
trace into one graph (no graph breaks), for the presets and the rotary + GQA decoder."""

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from anyformer import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper, presets
from anyformer.generation.session import _forward
from anyformer.generation.steppers import CachedStepper


def _breaks(fn, *args, **kwargs) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args, **kwargs).graph_break_count


def test_decoder_forward_has_no_graph_breaks():
    model = TransformerWrapper(
        num_tokens=64,
        max_seq_len=32,
        attn_layers=Decoder(dim=32, depth=2, heads=2, attn_flash=True),
    ).eval()
    assert _breaks(model, torch.randint(0, 64, (2, 16))) == 0


def test_encoder_with_mask_has_no_graph_breaks():
    model = TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=Encoder(dim=32, depth=1, heads=2)
    ).eval()
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 10:] = False
    assert _breaks(model, torch.randint(0, 64, (2, 16)), mask=mask) == 0


def test_training_loss_has_no_graph_breaks():
    model = TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=Decoder(dim=32, depth=1, heads=2)
    )
    assert _breaks(AutoregressiveWrapper(model), torch.randint(0, 64, (2, 17))) == 0


# ------------------------------------------------ presets, rotary + GQA, one cached decode step

_TINY = dict(dim=32, depth=2, heads=4, attn_dim_head=8, ff_inner_dim=64)


def _preset(name: str) -> torch.nn.Module:
    """A tiny model of preset `name`: its recipe with small sizes."""
    keywords = presets.PRESETS[name][0](num_tokens=64, max_seq_len=64)
    keywords.update(_TINY)
    if "rotary_emb_dim" in keywords:
        keywords.update(rotary_emb_dim=8, attn_kv_heads=2)  # rotary over the head, GQA
    wrapper, stack = presets.split(name, keywords)
    stack_cls = {"Decoder": Decoder, "Encoder": Encoder}[presets.PRESETS[name][2]]
    return TransformerWrapper(**wrapper, attn_layers=stack_cls(**stack))


def _inputs(name: str, n: int = 16) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    x = torch.randint(0, 64, (2, n))
    if name == "bert":
        return x, {"embed_ids": {"token_type": torch.zeros(2, n, dtype=torch.long)}}
    return x, {}


def _explain(fn, *args, **kwargs):
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args, **kwargs)


def _one_graph(fn, *args, **kwargs) -> tuple[int, int, list[str]]:
    """(graph count, graph break count, break reasons): one graph and no break is (1, 0, [])."""
    e = _explain(fn, *args, **kwargs)
    return e.graph_count, e.graph_break_count, [str(r.reason)[:200] for r in e.break_reasons]


PRESET_NAMES = ["llama", "gpt2", "bert", "modern"]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_forward_is_one_graph(name):
    model = _preset(name).eval()
    x, kw = _inputs(name)
    assert _one_graph(model, x, **kw) == (1, 0, [])


def _mlm_loss(model: torch.nn.Module, x: torch.Tensor, kw: dict) -> torch.Tensor:
    """An encoder's training loss: cross-entropy on every fourth position (masked LM)."""
    labels = torch.full_like(x, -100)
    labels[:, ::4] = x[:, ::4]
    logits = model(x.masked_fill(labels != -100, 0), **kw)
    return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_training_loss_is_one_graph(name):
    model = _preset(name).train()
    x, kw = _inputs(name, 17)
    if name == "bert":
        assert _one_graph(_mlm_loss, model, x, kw) == (1, 0, [])
    else:
        assert _one_graph(AutoregressiveWrapper(model), x) == (1, 0, [])


def test_rotary_gqa_decoder_forward_and_loss_have_no_graph_breaks():
    """The modern configuration (rotary, no ALiBi, grouped-query attention): 11 breaks in the
    forward and 13 in the loss before (a cached_property's lock in the rotary angles)."""
    stack = Decoder(dim=32, depth=2, heads=4, attn_kv_heads=2, rotary_pos_emb=True)
    model = TransformerWrapper(num_tokens=64, max_seq_len=0, attn_layers=stack)
    x = torch.randint(0, 64, (2, 17))
    assert _one_graph(model.eval(), x[:, :16]) == (1, 0, [])
    assert _one_graph(AutoregressiveWrapper(model.train()), x) == (1, 0, [])


@pytest.mark.parametrize("name", ["llama", "gpt2", "modern"])
def test_cached_decode_step_is_one_graph(name):
    """The step generation runs per token: CachedStepper.feed, one token with a KV cache."""
    model = _preset(name).eval()
    prompts, _ = _inputs(name, 5)
    stepper = CachedStepper(_forward(model), prompts, None, 8, None, {})
    with torch.no_grad():
        stepper.start()
        assert stepper.cache.length == 5
        assert _one_graph(stepper.feed, torch.randint(0, 64, (2, 1))) == (1, 0, [])
    assert stepper.cache.length == 6  # the traced step ran: one more cached position


def test_rotary_table_growth_traces_without_graph_breaks():
    """A forward past the first 1024 positions grows the rotary table inside the graph."""
    stack = Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, rotary_pos_emb=True)
    model = TransformerWrapper(num_tokens=64, max_seq_len=0, attn_layers=stack).eval()
    assert model.attn_layers.rotary.cos_table.shape[0] == 1024
    assert _one_graph(model, torch.randint(0, 64, (1, 1100))) == (1, 0, [])
    assert model.attn_layers.rotary.cos_table.shape[0] == 2048
