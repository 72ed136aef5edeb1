"""Equality oracle: every row of table.py in anyformer and in x-transformers 1.28.2, same weights.

Per row: logits (max abs 1e-5), loss, gradients mapped back through the converter (1e-4),
greedy tokens for 32 steps with and without the KV cache (decoders), the constants of the
initialisation (zero-init outputs, unit norm gains), and the bitwise converter round trip.
Rows that name a 1.28.2 defect assert exactly the difference that defect makes.
All comparisons run in float32, in eval mode (dropout keywords only change training).
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import x_transformers as xt
from torch import Tensor, nn

import anyformer as af
from anyformer.convert import load_x_transformers_state_dict, to_x_transformers_state_dict

from .table import DEFECTS, ROWS, Row

LOGITS_ATOL = 1e-5
LOSS_ATOL = 1e-5
GRAD_ATOL = 1e-4
GENERATE_STEPS = 32

_STACK = {
    "decoder": "Decoder",
    "encoder": "Encoder",
    "prefix": "PrefixDecoder",
    "cross": "Decoder",
    "cross_attender": "CrossAttender",
    "vit": "Encoder",
    "xl": "Decoder",
    "continuous": "Decoder",
}


def _params(rows: list[Row], outputs: bool = True) -> list[Any]:
    """pytest params; a row's xfail (an anyformer bug) marks the tests that compare outputs."""

    def marks(r: Row) -> list[Any]:
        return [pytest.mark.xfail(strict=True, reason=r.xfail)] if r.xfail and outputs else []

    return [pytest.param(r, id=r.id, marks=marks(r)) for r in rows]


ALL_WEIGHTS = _params(ROWS, outputs=False)
LOGITS = _params([r for r in ROWS if r.holds("logits")])
LOSS = _params([r for r in ROWS if r.holds("loss")])
GENERATING = _params([r for r in ROWS if r.generates and r.holds("generate")])


def _seed(row: Row) -> int:
    return zlib.crc32(row.id.encode())


def build(lib: Any, row: Row, side: str) -> nn.Module:
    """The model of `row` from library `lib` (anyformer or x_transformers)."""
    stack, wrapper = row.keywords(side)
    if row.kind == "xtransformer":
        return lib.XTransformer(**wrapper)
    layers = getattr(lib, _STACK[row.kind])(**stack)
    if row.kind == "vit":
        return lib.ViTransformerWrapper(**wrapper, attn_layers=layers)
    if row.kind == "continuous":
        return lib.ContinuousTransformerWrapper(**wrapper, attn_layers=layers)
    return lib.TransformerWrapper(**wrapper, attn_layers=layers)


def jitter(model: nn.Module, seed: int) -> None:
    """Move every parameter off its initial value, so that a misplaced tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)


def make_pair(row: Row) -> tuple[nn.Module, nn.Module]:
    """(ours, theirs) in eval mode, theirs loaded from ours through the converter."""
    torch.manual_seed(_seed(row))
    ours = build(af, row, "ours")
    theirs = build(xt, row, "theirs")
    jitter(ours, _seed(row) + 1)
    result = theirs.load_state_dict(
        to_x_transformers_state_dict(ours), strict=row.defect != "final_norm_ignored"
    )
    if row.defect == "final_norm_ignored":  # the only tensor we cannot supply
        assert result.missing_keys == ["attn_layers.final_norm.weight"]
        assert result.unexpected_keys == []
    return ours.eval(), theirs.eval()


@dataclass
class Inputs:
    """What one row feeds both models."""

    x: Tensor | None = None  # (b, n + 1) tokens: x[:, :-1] for logits, all of it for the loss
    kwargs: dict[str, Any] | None = None  # mask, context, context_mask, prefix_attn_len, ...
    mask: Tensor | None = None  # (b, n) padding mask of x[:, :-1]
    img: Tensor | None = None
    labels: Tensor | None = None
    src: Tensor | None = None
    mem_masks: Tensor | None = None  # xl: (b, max memory) mask, its last columns per segment


def make_inputs(row: Row, ours: nn.Module) -> Inputs:
    gen = torch.Generator().manual_seed(_seed(row) + 2)
    b, n = 2, 12
    spec = row.inputs
    if row.kind == "vit":
        _, wrapper = row.keywords("ours")
        size, channels = wrapper["image_size"], wrapper.get("channels", 3)
        img = torch.randn(b, channels, size, size, generator=gen)
        labels = torch.randint(0, wrapper["num_classes"] or 1, (b,), generator=gen)
        return Inputs(img=img, labels=labels, kwargs={})
    if row.kind == "xtransformer":
        _, wrapper = row.keywords("ours")
        src = torch.randint(0, wrapper["enc_num_tokens"], (b, n), generator=gen)
        tgt = torch.randint(0, wrapper["dec_num_tokens"], (b, n + 1), generator=gen)
        mask = _padding_mask(b, n) if spec.get("mask") else None
        return Inputs(x=tgt, src=src, mask=mask, kwargs={})
    if row.kind == "continuous":
        x = torch.randn(b, n + 1, ours.dim_in, generator=gen)
    else:
        x = torch.randint(0, ours.num_tokens, (b, n + 1), generator=gen)
    kwargs: dict[str, Any] = {}
    mask = _padding_mask(b, n) if spec.get("mask") else None
    if mask is not None:
        kwargs["mask"] = mask
    if "context_len" in spec:
        dim_context = ours.attn_layers.config.cross_attention.dim_context or ours.attn_layers.dim
        m = spec["context_len"]
        kwargs["context"] = torch.randn(b, m, dim_context, generator=gen)
        if spec.get("context_mask"):
            context_mask = torch.ones(b, m, dtype=torch.bool)
            context_mask[1, 0 if spec["context_mask"] == "row 1 empty" else m // 2 :] = False
            kwargs["context_mask"] = context_mask
    if "prefix_attn_len" in spec:
        value = spec["prefix_attn_len"]
        kwargs["prefix_attn_len"] = value if isinstance(value, int) else torch.tensor(value)
    if spec.get("embed_ids"):
        sizes = ours.config.embed_num_tokens
        kwargs["embed_ids"] = {
            name: torch.randint(0, size, (b, n), generator=gen) for name, size in sizes.items()
        }
    mem_masks = None
    if spec.get("mem_masks"):  # batch row 1 hides every third memory row
        mem_masks = torch.ones(b, 4 * n, dtype=torch.bool)
        mem_masks[1, ::3] = False
    return Inputs(x=x, kwargs=kwargs, mask=mask, mem_masks=mem_masks)


def _padding_mask(b: int, n: int) -> Tensor:
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, n - 4 :] = False
    return mask


def logits(model: nn.Module, row: Row, inp: Inputs) -> Tensor:
    """The same call on either library's model."""
    if row.kind == "vit":
        return model(inp.img)
    if row.kind == "xtransformer":
        enc = model.encoder(inp.src, mask=inp.mask, return_embeddings=True)
        return model.decoder.net(inp.x[:, :-1], context=enc, context_mask=inp.mask)
    if row.kind == "xl":
        return xl_logits(model, inp)
    return model(inp.x[:, :-1], **inp.kwargs)


def xl_logits(model: nn.Module, inp: Inputs) -> Tensor:
    """Segments of max_seq_len, each with the memories of the ones before (both libraries)."""
    mems, outs = None, []
    for chunk in inp.x[:, :-1].split(model.max_seq_len, dim=1):
        kwargs: dict[str, Any] = {}
        if mems is not None and inp.mem_masks is not None:
            kwargs["mem_masks"] = [inp.mem_masks[:, -mems[0].shape[1] :]] * len(mems)
        out, mems = model(chunk, mems=mems, return_mems=True, **kwargs)
        outs.append(out)
    return torch.cat(outs, dim=1)


def loss(lib: Any, model: nn.Module, row: Row, inp: Inputs) -> Tensor:
    if row.kind == "xtransformer":
        return model(inp.src, inp.x, mask=inp.mask)
    if row.kind in ("decoder", "cross"):
        return lib.AutoregressiveWrapper(model)(inp.x, **inp.kwargs)
    if row.kind == "xl":
        return lib.XLAutoregressiveWrapper(model)(inp.x)
    if row.kind == "continuous":
        return lib.ContinuousAutoregressiveWrapper(model)(inp.x, **inp.kwargs)
    out = logits(model, row, inp)
    if row.kind == "vit":
        return F.cross_entropy(out, inp.labels) if inp.labels is not None else out.square().mean()
    target = inp.x[:, 1:] % out.shape[-1]
    if inp.mask is not None:
        target = target.masked_fill(~inp.mask, -100)
    return F.cross_entropy(out.transpose(1, 2), target, ignore_index=-100)


def zero_padded_queries(model: nn.Module, mask: Tensor) -> list[Any]:
    """Hooks that zero anyformer's attention outputs at padded queries, as 1.28.2 does."""

    def hook(mod: nn.Module, args: Any, out: Tensor) -> Tensor:
        rows = out.shape[1] - mask.shape[1]  # memory tokens in front are kept rows
        return out * F.pad(mask, (rows, 0), value=True)[..., None]

    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, af.Attention)]


def max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --- the checks ---------------------------------------------------------------------------


def test_table_size_and_coverage() -> None:
    kinds = {r.kind for r in ROWS}
    assert len(ROWS) >= 25
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert {"decoder", "encoder", "prefix", "cross", "vit", "xtransformer"} <= kinds
    assert all(r.defect is None or r.defect in DEFECTS for r in ROWS)


@pytest.mark.parametrize("row", LOGITS)
def test_logits(row: Row) -> None:
    ours, theirs = make_pair(row)
    inp = make_inputs(row, ours)
    with torch.no_grad():
        expected = logits(theirs, row, inp)
        got = logits(ours, row, inp)
        if inp.mask is not None and row.kind != "xtransformer":
            keep = inp.mask
            assert max_diff(got[keep], expected[keep]) <= LOGITS_ATOL
            hooks = zero_padded_queries(ours, inp.mask)  # the one difference (NOTES)
            got = logits(ours, row, inp)
            for h in hooks:
                h.remove()
    assert max_diff(got, expected) <= LOGITS_ATOL


@pytest.mark.parametrize("row", LOSS)
def test_loss_and_gradients(row: Row) -> None:
    ours, theirs = make_pair(row)
    inp = make_inputs(row, ours)
    loss_ours = loss(af, ours, row, inp)
    loss_theirs = loss(xt, theirs, row, inp)
    assert abs(loss_ours.item() - loss_theirs.item()) <= LOSS_ATOL
    loss_ours.backward()
    loss_theirs.backward()

    theirs_grads = {
        k: (
            (v.grad if v.grad is not None else torch.zeros_like(v))
            if isinstance(v, nn.Parameter)
            else v  # buffers (rotary frequencies) are no parameters: their values map back
        )
        for k, v in theirs.state_dict(keep_vars=True).items()
    }
    if row.defect == "glu_bias_kept":  # a parameter only 1.28.2 has
        theirs_grads = {k: v for k, v in theirs_grads.items() if not k.endswith("ff.0.proj.bias")}
    mapped = copy.deepcopy(ours)
    load_x_transformers_state_dict(mapped, theirs_grads)
    ours_params = ours.state_dict(keep_vars=True)
    worst = {}
    for key, grad in mapped.state_dict().items():
        p = ours_params[key]
        ours_grad = p.grad if p.grad is not None else torch.zeros_like(p)
        worst[key] = max_diff(ours_grad, grad)
    assert max(worst.values()) <= GRAD_ATOL, {k: v for k, v in worst.items() if v > GRAD_ATOL}
    assert any(v.abs().sum() > 0 for v in theirs_grads.values())  # not vacuous


def _generate(lib: Any, model: nn.Module, row: Row, inp: Inputs, cache_kv: bool) -> Tensor:
    if row.kind == "xtransformer":
        return model.generate(
            inp.src, inp.x[:, :1], GENERATE_STEPS, mask=inp.mask, temperature=0.0, cache_kv=cache_kv
        )
    prompt = inp.x[:, :8]
    kwargs = {k: v for k, v in inp.kwargs.items() if k in ("context", "context_mask")}
    wrapper = lib.AutoregressiveWrapper(model)
    return wrapper.generate(prompt, GENERATE_STEPS, temperature=0.0, cache_kv=cache_kv, **kwargs)


@pytest.mark.parametrize("row", GENERATING)
def test_greedy_generation(row: Row) -> None:
    ours, theirs = make_pair(row)
    inp = make_inputs(row, ours)
    expected = _generate(xt, theirs, row, inp, cache_kv=False)
    assert expected.shape == (2, GENERATE_STEPS)
    assert torch.equal(_generate(xt, theirs, row, inp, cache_kv=True), expected)
    assert torch.equal(_generate(af, ours, row, inp, cache_kv=False), expected)
    assert torch.equal(_generate(af, ours, row, inp, cache_kv=True), expected)


@pytest.mark.parametrize("row", ALL_WEIGHTS)
def test_initial_constants(row: Row) -> None:
    """Zero-initialised outputs, unit norm gains, ...: where one side's fresh init is a
    constant tensor, the other side's is the same constant."""
    torch.manual_seed(_seed(row))
    ours = to_x_transformers_state_dict(build(af, row, "ours"))
    theirs = build(xt, row, "theirs").state_dict()
    filled = {k for k in ours if k.endswith(("ff.0.proj.bias", "encoder.to_logits.weight"))}
    constants = 0
    for key in sorted(set(ours) - filled):
        a, b = ours[key], theirs[key]
        for one, other in ((a, b), (b, a)):
            value = one.flatten()[0]
            if torch.all(one == value):
                constants += 1
                assert torch.all(other == value), (
                    f"{key}: {other.flatten()[:4]} vs constant {value}"
                )
    assert constants > 0


@pytest.mark.parametrize("row", ALL_WEIGHTS)
def test_round_trip_is_bitwise(row: Row) -> None:
    """anyformer -> x-transformers (the real 1.28.2 module) -> anyformer, torch.equal throughout."""
    ours, theirs = make_pair(row)
    back = build(af, row, "ours")
    if row.defect == "final_norm_ignored":
        with pytest.raises(ValueError, match="pre_norm_has_final_norm=True"):
            load_x_transformers_state_dict(back, theirs.state_dict())
        load_x_transformers_state_dict(back, to_x_transformers_state_dict(ours))
    else:
        load_x_transformers_state_dict(back, theirs.state_dict())
    expected = ours.state_dict()
    got = back.state_dict()
    assert list(got) == list(expected)
    unequal = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert unequal == []


# --- the defects of 1.28.2 -----------------------------------------------------------------


def _row(defect: str) -> Row:
    return next(r for r in ROWS if r.defect == defect)


def test_defect_final_norm_ignored() -> None:
    """1.28.2 logits == our last hidden state, LayerNorm-ed with its final norm gain, then our head."""
    row = _row("final_norm_ignored")
    ours, theirs = make_pair(row)
    assert not any("final_norm" in k for k in ours.state_dict())
    gain = torch.randn(ours.attn_layers.dim, generator=torch.Generator().manual_seed(3)) + 1
    with torch.no_grad():
        theirs.attn_layers.final_norm.weight.copy_(gain)
    inp = make_inputs(row, ours)
    with torch.no_grad():
        hidden = ours(inp.x[:, :-1], return_embeddings=True).double()
        centred = hidden - hidden.mean(-1, keepdim=True)
        normed = centred / torch.sqrt(centred.square().mean(-1, keepdim=True) + 1e-5) * gain
        expected = (normed @ ours.to_logits.weight.double().T).float()
        got = theirs(inp.x[:, :-1])
        assert max_diff(got, expected) <= LOGITS_ATOL
        assert max_diff(got, ours(inp.x[:, :-1])) > 0.1  # the norm does change the logits


def test_defect_glu_bias_kept() -> None:
    """1.28.2 has one extra tensor per feedforward, the GLU projection bias; with a bias b its
    logits are ours with b added to our (bias-free) projection."""
    row = _row("glu_bias_kept")
    ours, theirs = make_pair(row)
    extra = sorted(set(theirs.state_dict()) - set(_renamed_keys(ours)))
    assert extra == [f"attn_layers.layers.{i}.1.ff.0.proj.bias" for i in (1, 3)]
    gen = torch.Generator().manual_seed(4)
    biases = {}
    with torch.no_grad():
        for key in extra:
            bias = torch.randn(theirs.state_dict()[key].shape, generator=gen)
            theirs.get_parameter(key).copy_(bias)
            biases[key] = bias
    hooks = [
        ours.attn_layers.layers[i].branch.proj_in.register_forward_hook(
            lambda mod, args, out, b=biases[key]: out + b
        )
        for i, key in zip((1, 3), extra)
    ]
    inp = make_inputs(row, ours)
    with torch.no_grad():
        expected = theirs(inp.x[:, :-1])
        with_bias = ours(inp.x[:, :-1])
        for h in hooks:
            h.remove()
        assert max_diff(with_bias, expected) <= LOGITS_ATOL
        assert max_diff(ours(inp.x[:, :-1]), expected) > 0.01
    with pytest.raises(ValueError, match="keeps the GLU projection bias with ff_no_bias=True"):
        load_x_transformers_state_dict(build(af, row, "ours"), theirs.state_dict())


def _renamed_keys(model: nn.Module) -> list[str]:
    """x-transformers keys that come from anyformer tensors (without the zero fills)."""
    return [k for k in to_x_transformers_state_dict(model) if not k.endswith("ff.0.proj.bias")]


def test_defect_cache_trim_without_positions() -> None:
    """max_seq_len=0: 1.28.2's cached greedy decoding departs from its uncached one (we match the
    uncached one, cached or not); making its cache trim a no-op makes it match too."""
    row = _row("cache_trim_without_positions")
    ours, theirs = make_pair(row)
    inp = make_inputs(row, ours)
    expected = _generate(xt, theirs, row, inp, cache_kv=False)
    assert torch.equal(_generate(af, ours, row, inp, cache_kv=False), expected)
    assert torch.equal(_generate(af, ours, row, inp, cache_kv=True), expected)
    cached = _generate(xt, theirs, row, inp, cache_kv=True)
    assert not torch.equal(cached, expected)
    untrimmed = xt.AutoregressiveWrapper(theirs)
    untrimmed.max_seq_len = 10**6  # the trim keeps cached_kv[..., -(max_seq_len - 1):, :]
    prompt = inp.x[:, :8]
    out = untrimmed.generate(prompt, GENERATE_STEPS, temperature=0.0, cache_kv=True)
    assert torch.equal(out, expected)


def test_defect_empty_row_attends_everything() -> None:
    """Batch row 1 has no visible context: 1.28.2's cross-attention output there is
    to_out(to_v(mean of the context)) (uniform attention over masked keys); ours is zero.
    Row 0 agrees; with that output put into our cross-attention by hand, row 1 agrees too."""
    row = _row("empty_row_attends_everything")
    ours, theirs = make_pair(row)
    inp = make_inputs(row, ours)
    context = inp.kwargs["context"]
    assert not inp.kwargs["context_mask"][1].any()
    ours_cross = [blk.branch for blk in ours.attn_layers.layers if blk.layer_type == "c"]
    theirs_cross = [
        layer[1]
        for t, layer in zip(theirs.attn_layers.layer_types, theirs.attn_layers.layers)
        if t == "c"
    ]
    assert len(ours_cross) == len(theirs_cross) == 2

    def uniform_row_1(attn: nn.Module) -> Any:
        def hook(mod: nn.Module, args: Any, out: Tensor) -> Tensor:
            out = out.clone()
            out[1] = attn.to_out(attn.to_v(context[1].mean(0)))
            return out

        return hook

    with torch.no_grad():
        expected = logits(theirs, row, inp)
        got = logits(ours, row, inp)
        assert max_diff(got[0], expected[0]) <= LOGITS_ATOL
        assert max_diff(got[1], expected[1]) > 1e-3
        hooks = [
            o.register_forward_hook(uniform_row_1(t)) for o, t in zip(ours_cross, theirs_cross)
        ]
        by_hand = logits(ours, row, inp)
        for h in hooks:
            h.remove()
    assert max_diff(by_hand, expected) <= LOGITS_ATOL


def test_defect_tied_head_ignores_logits_dim() -> None:
    """1.28.2 silently ignores logits_dim with tie_embedding=True (the head is the embedding);
    anyformer refuses the combination."""
    keywords = dict(num_tokens=32, max_seq_len=8, logits_dim=7, tie_embedding=True)
    theirs = xt.TransformerWrapper(**keywords, attn_layers=xt.Decoder(dim=16, depth=1, heads=2))
    assert theirs(torch.randint(0, 32, (1, 8))).shape == (1, 8, 32)
    with pytest.raises(ValueError, match="tie_embedding=True needs emb_dim == dim and logits_dim"):
        af.TransformerWrapper(**keywords, attn_layers=af.Decoder(dim=16, depth=1, heads=2))


def test_defect_rotary_dim_floor_32() -> None:
    """1.28.2 built with rotary_emb_dim=16 rotates 32 features: it equals ours built with 32 (the
    row), not ours built with 16, whose 8 frequencies its 16 cannot load into."""
    row = _row("rotary_dim_floor_32")
    ours, theirs = make_pair(row)
    assert row.keywords("theirs")[0]["rotary_emb_dim"] == 16
    assert theirs.attn_layers.rotary_pos_emb.inv_freq.shape == (16,)  # 32 rotated features
    honest = build(af, row, "theirs").eval()  # anyformer with rotary_emb_dim=16
    assert honest.attn_layers.rotary.dim == 16
    honest.load_state_dict(ours.state_dict())  # the same weights (rotary has none)
    inp = make_inputs(row, ours)
    with torch.no_grad():
        expected = theirs(inp.x[:, :-1])
        assert max_diff(ours(inp.x[:, :-1]), expected) <= LOGITS_ATOL
        assert max_diff(honest(inp.x[:, :-1]), expected) > 1e-3
    with pytest.raises(ValueError, match="shapes that differ"):
        load_x_transformers_state_dict(build(af, row, "theirs"), theirs.state_dict())


def test_defect_dynamic_bias_cannot_cache() -> None:
    """1.28.2's cached decoding with dynamic_pos_bias fails (bare AssertionError); ours decodes
    with and without the cache to 1.28.2's uncached tokens."""
    for row in [r for r in ROWS if r.defect == "dynamic_bias_cannot_cache"]:
        ours, theirs = make_pair(row)
        inp = make_inputs(row, ours)
        expected = _generate(xt, theirs, row, inp, cache_kv=False)
        with pytest.raises(AssertionError):
            _generate(xt, theirs, row, inp, cache_kv=True)
        assert torch.equal(_generate(af, ours, row, inp, cache_kv=True), expected)
        assert torch.equal(_generate(af, ours, row, inp, cache_kv=False), expected)
