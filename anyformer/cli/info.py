"""``anyformer info DIR``: configuration, parameter count and each layer's attention path."""

from __future__ import annotations

import argparse
import json
from typing import Any

from torch import nn

from ..serialization import read_config
from .checkpoint import LOG_FILE, run_dir_of
from .common import load_model
from .model import count_parameters
from .runlog import read_log

__all__ = ["add_parser", "attention_paths", "run"]


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser(
        "info",
        help="print a saved model's configuration, size and attention paths",
        description=__doc__.split(": ", 1)[1],
        formatter_class=formatter,
    )
    p.add_argument("dir", metavar="DIR", help="run folder (its newest checkpoint) or model folder")


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "embed_num_tokens":
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((prefix + key, value))
    return out


def _attend_path(module: nn.Module) -> str:
    attend = next((m for m in module.modules() if type(m).__name__ == "Attend"), None)
    if attend is None:
        return "attention (path unknown)"
    if getattr(attend, "flash", False):
        return "fused: F.scaled_dot_product_attention"
    return "explicit: softmax(q k^T / sqrt(d)) v"


def attention_paths(net: nn.Module) -> list[str]:
    """One line per layer of the stack: its kind and, for attention, the path it runs."""
    lines = []
    for i, block in enumerate(net.attn_layers.layers):
        kind = getattr(block, "layer_type", "?")
        if kind == "f":
            lines.append(f"{i:>3}  feedforward")
        else:
            name = "cross-attention" if kind == "c" else "self-attention"
            lines.append(f"{i:>3}  {name:<15} {_attend_path(block)}")
    return lines


def run(args: argparse.Namespace, argv: list[str]) -> int:
    folder, lm = load_model(args.dir, "cpu")
    saved = read_config(folder)
    net = lm.net
    print(f"model folder: {folder}")
    wrapper = saved.get("wrapper", {}).get("class")
    cls = f"{wrapper}({saved['class']})" if wrapper else saved["class"]
    print(f"class: {cls}, saved by anyformer {saved.get('anyformer_version', '?')}")
    print(f"parameters: {count_parameters(net):,}")
    run_dir = run_dir_of(folder)
    if run_dir is not None:
        evals = [r for r in read_log(run_dir / LOG_FILE) if "val_bpb" in r]
        step = int(folder.name.split("_")[-1])
        at = [r for r in evals if r.get("step") == step]
        score = f", validation bits per byte {at[-1]['val_bpb']:.4f}" if at else ""
        print(f"training: step {step} of run {run_dir}{score}")
    print("configuration:")
    for key, value in _flatten(net.config_dict()):
        if key != "class":
            print(f"  {key} = {json.dumps(value)}")
    print("layers:")
    for line in attention_paths(net):
        print(line)
    return 0
