"""``anyformer info``: what the model is, readable; ``--all`` for every option (issue 20, item 6)."""

from __future__ import annotations

import re

import pytest

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper, save_pretrained
from anyformer.cli.main import main

DIM, VOCAB = 16, 256


def _save(tmp_path, **stack) -> tuple:
    net = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=32, attn_layers=Decoder(dim=DIM, depth=2, heads=2, **stack)
    )
    save_pretrained(AutoregressiveWrapper(net), tmp_path / "m")
    return tmp_path / "m", sum(p.numel() for p in net.parameters())


def _info(folder, capsys, *flags: str) -> str:
    assert main(["info", str(folder), *flags]) == 0
    return capsys.readouterr().out


def _parts(text: str) -> dict[str, int]:
    block = text.split("parameters: ", 1)[1].split("\npositions:", 1)[0].splitlines()[1:]
    rows = [re.match(r"  (\S.*?)\s{2,}([\d,]+)$", line) for line in block]
    return {m[1]: int(m[2].replace(",", "")) for m in rows if m}


def test_info_shows_parts_changed_options_and_resolved_positions(tmp_path, capsys):
    folder, total = _save(tmp_path, rotary_pos_emb=True)
    text = _info(folder, capsys)
    parts = _parts(text)
    assert f"parameters: {total:,}" in text
    assert sum(parts.values()) == total
    assert parts["token embedding"] == VOCAB * DIM  # an embedding row per byte
    assert parts["output head"] == DIM * VOCAB  # a bias-free projection back to the bytes
    assert "absolute positions" not in parts  # rotary turned the learned table off
    assert parts["final norm"] == DIM  # a LayerNorm's weight (no bias)
    assert re.search(r"^positions: rotary \(on \d+ of \d+ dims of each head", text, flags=re.M)
    assert "  attn_layers.positions.rotary_pos_emb = true" in text  # a change: shown
    assert "  attn_layers.heads = 2" in text
    assert "attention.dropout" not in text  # a default: only under --all
    assert "use_abs_pos_emb = true" not in text and "cross_attention" not in text
    assert re.search(r"^  0  self-attention\s+(fused|explicit): ", text, flags=re.M)
    assert len(text.splitlines()) < 40


def test_info_all_shows_every_option_as_resolved(tmp_path, capsys):
    folder, _ = _save(tmp_path, rotary_pos_emb=True)
    text = _info(folder, capsys, "--all")
    assert "  use_abs_pos_emb = false" in text  # as in effect, not the option's true
    assert "  attn_layers.norm.norm_eps = 1e-05" in text  # LayerNorm's eps, not null
    assert "  attn_layers.attention.dropout = 0.0" in text
    assert "cross_attention" not in text  # no cross-attention layer, no such options
    assert len(text.splitlines()) > 100


def test_info_all_keeps_cross_attention_options_where_there_is_cross_attention(tmp_path, capsys):
    folder, _ = _save(tmp_path, cross_attend=True)
    text = _info(folder, capsys, "--all")
    assert "  attn_layers.cross_attention.dim_head = 64" in text
    assert re.search(r"^  1  cross-attention ", text, flags=re.M)


@pytest.mark.parametrize("flags", [(), ("--all",)])
def test_info_learned_positions_are_named(tmp_path, capsys, flags):
    folder, _ = _save(tmp_path)
    text = _info(folder, capsys, *flags)
    assert "positions: absolute (AbsolutePositionalEmbedding, 32 positions)" in text
    assert _parts(text)["absolute positions"] == 32 * DIM  # a learned row per position
