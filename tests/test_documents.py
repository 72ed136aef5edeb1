"""Packed sequences (document masking, ``anyformer.nn.documents``): a row holding several
documents computes what each document computes alone (hypothesis over random splits), the fused
kernel takes one boolean mask shared by the heads, and the autoregressive loss scores no target
across a document boundary."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import anyformer.nn.attend as attend_module
from anyformer import (
    AutoregressiveWrapper,
    ContinuousTransformerWrapper,
    Decoder,
    Encoder,
    TransformerWrapper,
)
from anyformer.nn.documents import packed_documents

DIM, HEADS, VOCAB, MAX_LEN = 16, 2, 23, 16
POSITIONS = {
    "rotary": (dict(rotary_pos_emb=True), dict(use_abs_pos_emb=False)),
    "absolute": ({}, {}),
    "sinusoidal": ({}, dict(scaled_sinu_pos_emb=True)),
    "alibi": (dict(alibi_pos_bias=True), dict(use_abs_pos_emb=False)),
    "t5": (dict(rel_pos_bias=True), dict(use_abs_pos_emb=False)),
}
CPU = torch.device("cpu")


def _model(stack: type, positions: str, **stack_kw) -> TransformerWrapper:
    stack_opts, wrapper_opts = POSITIONS[positions]
    torch.manual_seed(0)
    layers = stack(dim=DIM, depth=2, heads=HEADS, **stack_opts, **stack_kw)
    model = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=MAX_LEN, attn_layers=layers, **wrapper_opts
    )
    return model.eval()


def _one_by_one(model, x: torch.Tensor, seq_lens: torch.Tensor) -> list[tuple[int, int, Tensor]]:
    """(row, first column, output) of every non-empty document, each run alone."""
    runs = []
    for row, lens in enumerate(seq_lens.tolist()):
        start = 0
        for length in lens:
            if length:
                runs.append((row, start, model(x[row : row + 1, start : start + length])[0]))
            start += length
    return runs


@st.composite
def packed_rows(draw, max_len: int = 12):
    """(n, seq_lens (b, k)): b rows of n columns, each split into up to k documents (some
    empty), with or without padding at the end."""
    b, k = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    n = draw(st.integers(2, max_len))
    pad = draw(st.booleans())
    rows = []
    for _ in range(b):
        total = draw(st.integers(1, n - 1)) if pad else n
        cuts = sorted(draw(st.lists(st.integers(0, total), min_size=k - 1, max_size=k - 1)))
        bounds = [0, *cuts, total]
        rows.append([hi - lo for lo, hi in pairwise(bounds)])
    return n, torch.tensor(rows)


def test_seq_lens_and_doc_ids_become_ids_and_restarting_positions():
    docs = packed_documents(torch.tensor([[2, 0, 3], [1, 4, 0]]), None, 2, 6, CPU)
    assert docs.ids.tolist() == [[0, 0, 2, 2, 2, -1], [0, 1, 1, 1, 1, -1]]
    assert docs.positions.tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 0]]
    # padding may stand anywhere with doc_ids; ids need not be consecutive
    docs = packed_documents(None, torch.tensor([[7, 7, -1, 3, 3, 3, -2]]), 1, 7, CPU)
    assert docs.ids.tolist() == [[7, 7, -1, 3, 3, 3, -1]]
    assert docs.positions.tolist() == [[0, 1, 0, 0, 1, 2, 0]]
    assert docs.next_in_document().tolist() == [[True, False, False, True, True, False]]
    keep = docs.keep_mask(causal=True)[0, 0]
    assert keep.shape == (7, 7)
    assert keep[4].tolist() == [False, False, False, True, True, False, False]
    assert not keep[2].any() and not keep[:, 2].any()  # padding: no query, no key


@settings(max_examples=30, deadline=None)
@given(
    rows=packed_rows(),
    stack=st.sampled_from([Decoder, Encoder]),
    positions=st.sampled_from(sorted(POSITIONS)),
    seed=st.integers(0, 2**16),
)
def test_packed_rows_equal_documents_one_by_one(rows, stack, positions, seed):
    n, seq_lens = rows
    model = _model(stack, positions)
    x = torch.randint(
        0, VOCAB, (seq_lens.shape[0], n), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        packed = model(x, seq_lens=seq_lens)
        by_ids = model(x, doc_ids=packed_documents(seq_lens, None, *x.shape, CPU).ids)
        alone = _one_by_one(model, x, seq_lens)
    assert packed.shape == (x.shape[0], n, VOCAB)
    for row, start, out in alone:
        got = packed[row, start : start + out.shape[0]]
        torch.testing.assert_close(got, out, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            by_ids[row, start : start + out.shape[0]], out, atol=1e-5, rtol=0
        )


@settings(max_examples=10, deadline=None)
@given(rows=packed_rows(), stack=st.sampled_from([Decoder, Encoder]), seed=st.integers(0, 99))
def test_continuous_wrapper_packed_rows_equal_documents_one_by_one(rows, stack, seed):
    n, seq_lens = rows
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(
        dim_in=5,
        dim_out=3,
        max_seq_len=MAX_LEN,
        attn_layers=stack(dim=DIM, depth=2, heads=HEADS, rotary_pos_emb=True),
    ).eval()
    x = torch.randn(seq_lens.shape[0], n, 5, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        packed = model(x, seq_lens=seq_lens)
        alone = _one_by_one(model, x, seq_lens)
    for row, start, out in alone:
        torch.testing.assert_close(
            packed[row, start : start + out.shape[0]], out, atol=1e-5, rtol=0
        )


def test_stack_takes_documents_and_combines_them_with_a_key_mask():
    torch.manual_seed(0)
    stack = Encoder(dim=DIM, depth=2, heads=HEADS, alibi_pos_bias=True).eval()
    x = torch.randn(1, 9, DIM)
    mask = torch.ones(1, 9, dtype=torch.bool)
    mask[0, 1] = False  # a hidden key inside the first document
    with torch.no_grad():
        packed = stack(x, seq_lens=torch.tensor([[4, 5]]), mask=mask)
        first = stack(x[:, :4], mask=mask[:, :4])
        second = stack(x[:, 4:])
    torch.testing.assert_close(packed[:, :4], first, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[:, 4:], second, atol=1e-5, rtol=0)


def test_fused_kernel_gets_one_boolean_mask_shared_by_the_heads(monkeypatch):
    model = _model(Decoder, "rotary")
    seen = []
    sdpa = attend_module.F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        seen.append((attn_mask.dtype, tuple(attn_mask.shape), kwargs.get("is_causal")))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attend_module.F, "scaled_dot_product_attention", recording)
    x = torch.randint(0, VOCAB, (2, 10))
    seq_lens = torch.tensor([[3, 7], [4, 4]])
    with torch.no_grad():
        fused = model(x, seq_lens=seq_lens)
    assert seen == [(torch.bool, (2, 1, 10, 10), False)] * 2  # one per layer, (b, 1, n, n)
    caps = model.capabilities()
    assert caps["fused_attention"] is True and caps["packed_documents"] is True
    explicit = _model(Decoder, "rotary", attn_kernel="explicit")
    explicit.load_state_dict(model.state_dict())
    assert explicit.capabilities()["fused_attention"] is False
    with torch.no_grad():
        torch.testing.assert_close(explicit(x, seq_lens=seq_lens), fused, atol=1e-5, rtol=0)


def test_autoregressive_loss_scores_no_target_across_documents():
    net = _model(Decoder, "absolute")
    wrapper = AutoregressiveWrapper(net).eval()
    x = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    seq_lens = torch.tensor([[5, 1, 4], [7, 5, 0]])  # row 0 ends in 2 padding tokens
    with torch.no_grad():
        loss = wrapper(x, seq_lens=seq_lens)
        by_ids = wrapper(x, doc_ids=packed_documents(seq_lens, None, 2, 12, CPU).ids)
        total, count = 0.0, 0
        for row, lens in enumerate(seq_lens.tolist()):
            start = 0
            for length in lens:
                doc = x[row, start : start + length]
                start += length
                if length < 2:
                    continue  # a one-token document has no target
                logits = net(doc[None, :-1])[0]
                total += F.cross_entropy(logits.double(), doc[1:], reduction="sum").item()
                count += length - 1
    assert count == 4 + 3 + 6 + 4
    assert loss.item() == pytest.approx(total / count, abs=1e-5)
    assert by_ids.item() == pytest.approx(total / count, abs=1e-5)
    with torch.no_grad():
        assert abs(wrapper(x).item() - total / count) > 1e-3  # unpacked: another loss


def test_packed_training_step_gradients_equal_the_documents_one_by_one():
    net = _model(Encoder, "t5")
    x = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(5))
    net(x, seq_lens=torch.tensor([[4, 5]])).square().sum().backward()
    packed = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    (net(x[:, :4]).square().sum() + net(x[:, 4:]).square().sum()).backward()
    for got, want in zip(packed, (p.grad for p in net.parameters())):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(seq_lens=torch.tensor([[2, 2]]), doc_ids=torch.zeros(1, 6)),
            "either seq_lens or doc_ids",
        ),
        (dict(seq_lens=torch.tensor([[4, 3]])), "sum to at most the row length 6"),
        (dict(seq_lens=torch.tensor([[4, -1]])), "smallest length -1"),
        (dict(seq_lens=torch.tensor([[2.0, 3.0]])), "seq_lens must be an integer tensor"),
        (dict(seq_lens=torch.tensor([[2, 3], [1, 1]])), r"shape \(1, num_documents\)"),
        (dict(doc_ids=torch.tensor([[0, 0, 1, 1]])), r"doc_ids must have shape \(1, 6\)"),
        (dict(doc_ids=torch.tensor([[0, 0, 1, 1, 0, 0]])), "document 0 in more than one run"),
        (dict(doc_ids=torch.tensor([[0, 0, -1, 0, 1, 1]])), "document 0 in more than one run"),
    ],
)
def test_invalid_documents_raise_naming_the_keyword(kwargs, message):
    model = _model(Decoder, "rotary")
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(1, 6, dtype=torch.long), **kwargs)


def test_options_that_cannot_pack_raise_and_capabilities_say_so():
    seq_lens = torch.tensor([[3, 3]])
    x = torch.zeros(1, 6, dtype=torch.long)
    shifted = _model(Decoder, "rotary", shift_tokens=1)
    assert shifted.capabilities()["packed_documents"] is False
    with pytest.raises(ValueError, match="need a stack without shift_tokens"):
        shifted(x, seq_lens=seq_lens)
    memory = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=MAX_LEN,
        num_memory_tokens=2,
        attn_layers=Decoder(dim=DIM, depth=1, heads=HEADS),
    )
    assert memory.capabilities()["packed_documents"] is False
    with pytest.raises(ValueError, match="memory tokens"):
        memory(x, seq_lens=seq_lens)
    model = _model(Decoder, "rotary")
    with pytest.raises(ValueError, match="cannot be combined with prepend_embeds"):
        model(x, seq_lens=seq_lens, prepend_embeds=torch.zeros(1, 2, DIM))
    with pytest.raises(ValueError, match="cannot be combined with cache"):
        model(x, seq_lens=seq_lens, cache=model(x[:, :2], return_intermediates=True)[1])
    with pytest.raises(ValueError, match="cannot be combined with seq_start_pos"):
        model(x, seq_lens=seq_lens, seq_start_pos=torch.tensor([1]))
    with pytest.raises(ValueError, match="cannot be combined with mems"):
        model.attn_layers(
            torch.zeros(1, 6, DIM), seq_lens=seq_lens, mems=[torch.zeros(1, 2, DIM)] * 2
        )


@pytest.mark.parametrize(
    "options",
    [
        dict(attn_sliding_window=3),
        dict(attn_max_attend_past=2),
        dict(attn_num_mem_kv=2, attn_kv_heads=1),
        dict(attn_qk_norm=True, residual_attn=True),
        dict(rotary_xpos=True),
    ],
)
def test_attention_options_keep_packed_rows_equal_to_documents_alone(options):
    model = _model(Decoder, "rotary", **options)
    x = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))
    seq_lens = torch.tensor([[5, 6, 0], [2, 3, 7]])
    with torch.no_grad():
        packed = model(x, seq_lens=seq_lens)
        alone = _one_by_one(model, x, seq_lens)
    for row, start, out in alone:
        torch.testing.assert_close(
            packed[row, start : start + out.shape[0]], out, atol=1e-5, rtol=0
        )


def test_resolved_documents_pass_to_the_stack_and_unchecked_calls_agree():
    model = _model(Decoder, "absolute")
    x = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(2))
    seq_lens = torch.tensor([[3, 5]])
    docs = packed_documents(seq_lens, None, 1, 8, CPU)
    with torch.no_grad():
        checked = model(x, seq_lens=seq_lens)
        unchecked = model(x, seq_lens=seq_lens, check_inputs=False)
        hidden = model.token_emb(x) + model.pos_emb(docs.positions)
        stack = model.to_logits(model.attn_layers(hidden, doc_ids=docs))
    torch.testing.assert_close(unchecked, checked, atol=0, rtol=0)
    torch.testing.assert_close(stack, checked, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"doc_ids must have shape \(1, 5\), got \(1, 8\)"):
        model.attn_layers(torch.zeros(1, 5, DIM), doc_ids=docs)
