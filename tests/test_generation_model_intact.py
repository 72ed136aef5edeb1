"""generate / stream / beam_search leave the model exactly as they found it: the same tensors
(values, strides, dtypes, devices, contiguity), the same modes, usable by every PyTorch API
after (parameters_to_vector, safetensors, training)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parameters_to_vector

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper

V = 40


def _model(**kw: Any) -> TransformerWrapper:
    torch.manual_seed(0)
    stack = Decoder(dim=32, depth=2, heads=4, attn_dim_head=8, **kw)
    return TransformerWrapper(num_tokens=V, max_seq_len=128, attn_layers=stack)


MODELS = {
    "rotary-gqa-glu": lambda: _model(rotary_pos_emb=True, attn_kv_heads=2, ff_glu=True),
    "absolute": lambda: _model(),
}


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything PyTorch can observe of the model's tensors and modes, values copied."""
    tensors = [
        *(("param", n, t) for n, t in model.named_parameters(remove_duplicate=False)),
        *(("buffer", n, t) for n, t in model.named_buffers(remove_duplicate=False)),
    ]
    return {
        "meta": [
            (kind, name, t.shape, t.stride(), t.dtype, t.device, t.is_contiguous(), t.requires_grad)
            for kind, name, t in tensors
        ],
        "values": [t.detach().clone() for _, _, t in tensors],
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "keys": list(model.state_dict()),
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["meta"] == before["meta"]
    assert after["modes"] == before["modes"]
    assert after["keys"] == before["keys"]
    for (kind, name, *_), a, b in zip(before["meta"], before["values"], after["values"]):
        assert torch.equal(a, b), f"{kind} {name} changed"


def _generate(lm: AutoregressiveWrapper, prompt: torch.Tensor) -> None:
    out = lm.generate(prompt, 6, temperature=0.0)
    assert out.shape == (2, 6)


def _generate_long(lm: AutoregressiveWrapper, prompt: torch.Tensor) -> None:
    """One row, many tokens: the session decodes from its own column-major weight copies."""
    assert lm.generate(prompt[:1], 70, temperature=0.0).shape == (1, 70)


def _stream_partly(lm: AutoregressiveWrapper, prompt: torch.Tensor) -> None:
    stream = lm.stream(prompt, 8, temperature=0.0)
    assert next(stream).shape == (2,) and next(stream).shape == (2,)
    stream.close()  # abandoned after two of eight steps


def _stream_fully(lm: AutoregressiveWrapper, prompt: torch.Tensor) -> None:
    assert len(list(lm.stream(prompt, 5, temperature=0.0))) == 5


def _beam_search(lm: AutoregressiveWrapper, prompt: torch.Tensor) -> None:
    assert lm.beam_search(prompt, 5, beams=3).shape == (2, 5)


def _uncached(lm: AutoregressiveWrapper, prompt: torch.Tensor) -> None:
    assert lm.generate(prompt, 4, cache_kv=False).shape == (2, 4)


DECODERS: dict[str, Callable[[AutoregressiveWrapper, torch.Tensor], None]] = {
    "generate": _generate,
    "generate-long": _generate_long,
    "stream-partly": _stream_partly,
    "stream": _stream_fully,
    "beam_search": _beam_search,
    "uncached": _uncached,
}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("decode", list(DECODERS))
@pytest.mark.parametrize("kind", list(MODELS))
def test_decoding_leaves_every_tensor_and_mode_as_found(kind, decode, train):
    model = MODELS[kind]().train(train)
    before = _snapshot(model)
    vector = parameters_to_vector(model.parameters()).detach().clone()
    DECODERS[decode](AutoregressiveWrapper(model), torch.randint(0, V, (2, 5)))
    _assert_same(before, _snapshot(model))
    assert torch.equal(parameters_to_vector(model.parameters()), vector)


@pytest.mark.parametrize("decode", ["generate", "generate-long", "stream-partly", "beam_search"])
def test_the_model_saves_and_trains_the_usual_ways_after_decoding(decode, tmp_path):
    model = MODELS["rotary-gqa-glu"]()
    lm = AutoregressiveWrapper(model)
    DECODERS[decode](lm, torch.randint(0, V, (2, 5)))
    # safetensors refuses non-contiguous tensors: every tensor is as it was built
    state = model.state_dict()
    save_file(state, tmp_path / "m")
    loaded = load_file(tmp_path / "m")
    assert sorted(loaded) == sorted(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    # a training step after decoding: finite loss, gradients for every weight, weights move
    weight = model.attn_layers.layers[0].branch.qkv.to_qkv.weight
    start = weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = lm(torch.randint(0, V, (2, 9)))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and weight.grad.shape == (4 * 8 + 2 * 2 * 8, 32)
    assert (weight - start).abs().max() > 0


def test_decoding_under_inference_mode_leaves_a_trainable_model():
    model = MODELS["rotary-gqa-glu"]()
    before = _snapshot(model)
    with torch.inference_mode():
        AutoregressiveWrapper(model).generate(torch.randint(0, V, (1, 3)), 4)
    _assert_same(before, _snapshot(model))
    assert not any(t.is_inference() for t in model.state_dict().values())
    loss = AutoregressiveWrapper(model)(torch.randint(0, V, (2, 9)))
    loss.backward()
    assert torch.isfinite(loss)
