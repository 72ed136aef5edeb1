"""``onnxable=True``: a small Decoder exports. torch.onnx.export needs the onnx/onnxscript
packages (not dependencies of anyformer); where they are missing, torch.export.export (the graph
capture the ONNX exporter builds on) is the test, and the exported program must compute what the
model computes."""

from __future__ import annotations

import pytest
import torch

from anyformer import Decoder, TransformerWrapper


def small_decoder(**attn) -> TransformerWrapper:
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=32,
        max_seq_len=16,
        attn_layers=Decoder(dim=16, depth=2, heads=4, attn_dim_head=4, attn_onnxable=True, **attn),
    ).eval()


@pytest.mark.parametrize(
    "attn",
    [{}, dict(attn_kv_heads=2, attn_num_mem_kv=2, attn_qk_norm=True, attn_gate_values=True)],
    ids=["plain", "gqa-mem-kv-qk-norm-gates"],
)
def test_torch_export_of_an_onnxable_decoder(attn):
    model = small_decoder(**attn)
    x = torch.randint(0, 32, (2, 10))
    program = torch.export.export(model, (x,), kwargs={"check_inputs": False})
    other = torch.randint(0, 32, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(other, check_inputs=False), model(other))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("triu" in op or "tril" in op for op in ops)  # masks from aranges only


def test_torch_onnx_export_of_an_onnxable_decoder(tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnx and onnxscript")
    model = small_decoder()
    x = torch.randint(0, 32, (1, 8))
    path = tmp_path / "decoder.onnx"
    torch.onnx.export(model, (x,), str(path), kwargs={"check_inputs": False})
    assert path.stat().st_size > 0
