"""anyformer.quantize: int8/int4 linear maps against float64 hand dequantization, bf16 and
quantized decoding against the plain module path with the same weights, the user's model left
untouched, model folders round-tripped bitwise, and the errors of prepare_for_decoding."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper, load_pretrained
from anyformer.quantize import (
    Int4Linear,
    Int8Linear,
    PackedBf16Linear,
    packed_bf16_supported,
    prepare_for_decoding,
)
from anyformer.stack.lean import LeanLoop


def _lm(seed: int = 0, dim: int = 64) -> AutoregressiveWrapper:
    torch.manual_seed(seed)
    stack = Decoder(
        dim=dim, depth=2, heads=4, rotary_pos_emb=True, use_rmsnorm=True, ff_glu=True, ff_swish=True
    )
    return AutoregressiveWrapper(
        TransformerWrapper(num_tokens=256, max_seq_len=96, attn_layers=stack)
    )


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _plain_greedy(wrapper: AutoregressiveWrapper, prompt: torch.Tensor, n: int) -> list[int]:
    """Greedy tokens decoded through the stack's modules with the KV cache: a forward hook on
    a block turns the session's decoding loop off (stack/lean.py), the plain way."""
    handle = wrapper.net.attn_layers.layers[0].register_forward_hook(lambda *args: None)
    try:
        return wrapper.generate(prompt, n, temperature=0.0)[0].tolist()
    finally:
        handle.remove()


# --------------------------------------------------------------------------- int8


def test_int8_product_equals_a_float64_hand_dequantization():
    torch.manual_seed(1)
    linear = nn.Linear(96, 48)
    x = torch.randn(3, 5, 96)
    q = Int8Linear.from_linear(linear)
    w = linear.weight.detach().double()
    scale = (w.abs().amax(1) / 127).float().double()  # one scale per output row, kept in fp32
    levels = torch.round(w / scale[:, None]).clamp(-127, 127)
    assert torch.equal(q.qweight.double(), levels)
    assert q.qweight.dtype == torch.int8
    want = x.double() @ (levels * scale[:, None]).t() + linear.bias.detach().double()
    got = q(x)
    assert got.shape == (3, 5, 48) and got.dtype == torch.float32
    assert (got.double() - want).abs().max().item() < 1e-5
    # the dequantization error of each weight is at most half its row's step
    assert ((levels * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-12).all()


# --------------------------------------------------------------------------- int4


def _hand_int4(w: torch.Tensor, g: int) -> torch.Tensor:
    """Groupwise min/max int4 in float64: the dequantized weight (q - 8) * scale + zero."""
    out_f, in_f = w.shape
    groups = w.double().view(out_f, in_f // g, g)
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).bfloat16().double()  # both kept at bf16 precision
    zero = (lo + 8 * scale).bfloat16().double()
    q = (torch.round((groups - zero) / scale) + 8).clamp(0, 15)
    return ((q - 8) * scale + zero).view(out_f, in_f)


@settings(max_examples=6, deadline=None)
@given(
    out_blocks=st.integers(1, 4),
    groups=st.integers(1, 3),
    group_size=st.sampled_from([32, 64, 128]),
    seed=st.integers(0, 2**16),
)
def test_int4_product_equals_a_float64_hand_dequantization(out_blocks, groups, group_size, seed):
    torch.manual_seed(seed)
    linear = nn.Linear(groups * group_size, 16 * out_blocks)
    x = torch.randn(2, groups * group_size)
    q = Int4Linear.from_linear(linear, group_size)
    deq = _hand_int4(linear.weight.detach(), group_size)
    torch.testing.assert_close(q.weight.double(), deq, atol=1e-6, rtol=0)
    # the CPU kernel multiplies bf16-rounded activations and rounds its result to bf16
    want = x.bfloat16().double() @ deq.t() + linear.bias.detach().double()
    got = q(x)
    assert got.shape == (2, 16 * out_blocks) and got.dtype == torch.float32
    assert ((got.double() - want).abs() <= 2**-7 * want.abs() + 1e-3).all()
    # each weight within half a step of its group (plus the bf16 rounding of scale and zero)
    err = (deq - linear.weight.detach().double()).abs()
    spread = linear.weight.detach().double().view(16 * out_blocks, groups, group_size)
    half = (spread.amax(-1) - spread.amin(-1)) / 30 + 2**-8 * spread.abs().amax(-1)
    assert (err <= half.repeat_interleave(group_size, 1)).all()


def test_int4_without_the_kernel_computes_what_the_kernel_does(monkeypatch):
    """The path of torch.compile and other devices: the kernel's arithmetic, by hand."""
    torch.manual_seed(3)
    linear = nn.Linear(64, 32)
    q = Int4Linear.from_linear(linear)
    x = torch.randn(4, 64)
    deq = _hand_int4(linear.weight.detach(), 32)
    want = (x.bfloat16().double() @ deq.t()).bfloat16().double() + linear.bias.detach().double()
    kernel = q(x)
    monkeypatch.setattr(q, "_kernel_ok", lambda x: False)
    plain = q(x)
    assert (plain.double() - want).abs().max().item() < 1e-6
    assert ((kernel.double() - want).abs() <= 2**-7 * want.abs() + 1e-6).all()


def test_int4_kernel_layout_follows_buffers_changed_in_place():
    torch.manual_seed(2)
    a, b = nn.Linear(64, 32, bias=False), nn.Linear(64, 32, bias=False)
    qa, qb = Int4Linear.from_linear(a), Int4Linear.from_linear(b)
    x = torch.randn(1, 64)
    first = qa(x)  # makes qa's packed layout
    with torch.no_grad():
        qa.qweight.copy_(qb.qweight)
        qa.scale.copy_(qb.scale)
        qa.zero.copy_(qb.zero)
    assert torch.equal(qa(x), qb(x))
    assert not torch.equal(first, qb(x))


# --------------------------------------------------------------------------- bf16

needs_bf16 = pytest.mark.skipif(not packed_bf16_supported(), reason="no native bf16 on this CPU")


@needs_bf16
def test_packed_bf16_linear_equals_f_linear_on_the_same_bf16_weights():
    torch.manual_seed(4)
    linear = nn.Linear(96, 80).bfloat16()
    packed = PackedBf16Linear.from_linear(linear)
    assert packed.weight is linear.weight and packed.bias is linear.bias  # ties are kept
    for rows in (1, 3):
        x = torch.randn(rows, 2, 96).bfloat16()
        with torch.no_grad():
            got = packed(x)
        assert got.shape == (rows, 2, 80) and got.dtype == torch.bfloat16
        assert torch.equal(got, torch.nn.functional.linear(x, linear.weight, linear.bias))
    assert packed.state_dict().keys() == linear.state_dict().keys()


@needs_bf16
def test_packed_bf16_linear_follows_its_weight_changed_in_place():
    torch.manual_seed(5)
    packed = PackedBf16Linear.from_linear(nn.Linear(64, 48, bias=False).bfloat16())
    other = nn.Linear(64, 48, bias=False).bfloat16()
    x = torch.randn(1, 64).bfloat16()
    with torch.no_grad():
        before = packed(x)  # makes the packed copy
        packed.weight.copy_(other.weight)
        after = packed(x)
    assert torch.equal(after, torch.nn.functional.linear(x, other.weight))
    assert not torch.equal(before, after)


# --------------------------------------------------------------------------- decoding


def test_bf16_greedy_decoding_equals_the_plain_path_with_the_same_bf16_weights():
    lm = _lm(3)
    prompt = torch.randint(0, 256, (1, 7))
    fast = prepare_for_decoding(lm, "bf16")
    assert next(fast.parameters()).dtype == torch.bfloat16
    if packed_bf16_supported():  # the maps multiply from packed copies
        assert type(fast.net.to_logits) is PackedBf16Linear
    assert LeanLoop.build(fast.net.attn_layers) is not None  # the session's decoding loop runs
    reference = copy.deepcopy(lm)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.bfloat16().float())  # the same bf16-rounded weights ...
    reference = reference.to(torch.bfloat16)  # ... computed in bf16 through the modules
    want = _plain_greedy(reference, prompt, 24)
    assert fast.generate(prompt, 24, temperature=0.0)[0].tolist() == want
    assert next(iter(fast.stream(prompt, 24, temperature=0.0))).tolist() == want[:1]


@pytest.mark.parametrize(("dtype", "quantize"), [(None, "int8"), (None, "int4"), ("bf16", "int4")])
def test_quantized_greedy_decoding_equals_the_plain_path(dtype, quantize):
    lm = _lm(4)
    prompt = torch.randint(0, 256, (1, 6))
    fast = prepare_for_decoding(lm, dtype, quantize)
    kinds = {Int8Linear: "int8", Int4Linear: "int4"}
    swapped = [m for m in fast.modules() if type(m) in kinds]
    assert (
        len(swapped) == 2 * 2 + 2 * 2 + 1
    )  # (qkv, out) x 2 attention, (in, out) x 2 ff, to_logits
    assert {kinds[type(m)] for m in swapped} == {quantize}
    assert LeanLoop.build(fast.net.attn_layers) is not None
    want = _plain_greedy(fast, prompt, 20)
    assert fast.generate(prompt, 20, temperature=0.0)[0].tolist() == want
    beams = fast.beam_search(prompt, 3, beams=1)
    assert beams[0].tolist() == want[:3]


@pytest.mark.parametrize(("dtype", "quantize"), [("bf16", None), (None, "int8"), ("bf16", "int4")])
def test_the_given_model_is_unchanged(dtype, quantize):
    lm = _lm(5).train()
    before = _snapshot(lm)
    types = [type(m) for m in lm.modules()]
    fast = prepare_for_decoding(lm, dtype, quantize)
    fast.generate(torch.randint(0, 256, (1, 5)), 70, temperature=1.0)
    after = lm.state_dict()
    assert before.keys() == after.keys()
    assert all(
        torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in after
    )
    assert [type(m) for m in lm.modules()] == types
    assert lm.training and all(p.dtype == torch.float32 for p in lm.parameters())
    assert fast is not lm


def test_nothing_to_change_returns_the_model_itself():
    lm = _lm(6)
    assert prepare_for_decoding(lm, None, None) is lm
    assert prepare_for_decoding(lm, "fp32", None) is lm
    back = prepare_for_decoding(prepare_for_decoding(lm, "bf16"), "fp32")
    assert next(back.parameters()).dtype == torch.float32


@pytest.mark.parametrize(
    ("dtype", "quantize"), [("bf16", None), (None, "int8"), (None, "int4"), ("bf16", "int4")]
)
def test_a_prepared_model_folder_round_trips_bitwise(tmp_path, dtype, quantize):
    fast = prepare_for_decoding(_lm(7), dtype, quantize)
    fast.save_pretrained(tmp_path / "m")
    entry = json.loads((tmp_path / "m" / "config.json").read_text()).get("quantize")
    if quantize is None:
        assert entry is None
    else:
        assert entry["method"] == quantize and len(entry["modules"]) == 9
    back = load_pretrained(tmp_path / "m")
    want, got = fast.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) and want[k].dtype == got[k].dtype for k in want)
    prompt = torch.randint(0, 256, (1, 5))
    assert torch.equal(
        back.generate(prompt, 8, temperature=0.0), fast.generate(prompt, 8, temperature=0.0)
    )


def test_a_folder_naming_a_missing_module_is_refused(tmp_path):
    prepare_for_decoding(_lm(8), None, "int8").save_pretrained(tmp_path / "m")
    file = tmp_path / "m" / "config.json"
    data = json.loads(file.read_text())
    data["quantize"]["modules"].append("net.nowhere")
    file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config\.json: 'quantize.modules' names 'net.nowhere'"):
        load_pretrained(tmp_path / "m")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "fp16"}, r"dtype must be one of \('fp32', 'bf16'\) or None, got 'fp16'"),
        ({"quantize": "int3"}, r"quantize must be one of \('int8', 'int4'\) or None, got 'int3'"),
        (
            {"quantize": "int4", "group_size": 48},
            r"group_size must be one of \(32, 64, 128, 256\), got 48",
        ),
    ],
)
def test_prepare_for_decoding_names_the_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare_for_decoding(_lm(), **kwargs)


def test_prepare_for_decoding_wants_a_module():
    with pytest.raises(TypeError, match=r"model must be an nn\.Module, got dict"):
        prepare_for_decoding({}, "bf16")  # type: ignore[arg-type]


def test_int4_refuses_widths_its_groups_do_not_divide():
    with pytest.raises(ValueError, match="in_features must be a multiple of group_size=32, got 48"):
        Int4Linear(48, 16)
