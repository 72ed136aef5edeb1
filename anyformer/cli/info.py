"""``anyformer info DIR``: what a saved model is: its size by part, the options that differ from
the defaults, its positions and each layer's attention path as resolved (``--all``: every option).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import torch

from ..serialization import read_config
from .checkpoint import LOG_FILE, run_dir_of
from .common import load_model
from .model import count_parameters, net_of
from .runlog import read_log

if TYPE_CHECKING:
    from ..wrappers.transformer import TransformerWrapper

__all__ = ["add_parser", "attention_paths", "parameter_parts", "resolved_options", "run"]

_KINDS = {"a": "self-attention", "c": "cross-attention", "f": "feedforward"}
_PATHS = {
    "fused": "fused: F.scaled_dot_product_attention",
    "explicit": "explicit: softmax(q k^T / sqrt(d)) v",
}
_ALWAYS = ("num_tokens", "max_seq_len", "attn_layers.dim", "attn_layers.depth")


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser(
        "info",
        help="print what a saved model is: size by part, options, positions, attention paths",
        description=(
            "Print a saved model's parameters by part, the options that differ from the "
            "defaults, its positions and each layer's attention path, as resolved."
        ),
        formatter_class=formatter,
    )
    p.add_argument("dir", metavar="DIR", help="run folder (its newest checkpoint) or model folder")
    p.add_argument("--all", action="store_true", help="print every option, not only the changed")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "embed_num_tokens":
            out.update(_flatten(value, f"{prefix}{key}."))
        elif key != "class":
            out[prefix + key] = value
    return out


def _norm_eps(net: TransformerWrapper) -> float | None:
    """The epsilon the stack's norms use (the option may say null: the norm's own default)."""
    for module in net.attn_layers.modules():
        eps = getattr(module, "eps", None)
        if "norm" in type(module).__name__.lower() and isinstance(eps, float):
            return eps
    return None


def _has_cross(net: TransformerWrapper) -> bool:
    return any(getattr(b, "layer_type", "") == "c" for b in net.attn_layers.layers)


def resolved_options(net: TransformerWrapper) -> dict[str, Any]:
    """Every option, flattened (``attn_layers.dim``), with the values in effect: the norms'
    epsilon, whether absolute positions are used; no cross-attention options without it."""
    options = _flatten(net.config_dict())
    if options.get("attn_layers.norm.norm_eps", 0) is None:
        options["attn_layers.norm.norm_eps"] = _norm_eps(net)
    if "use_abs_pos_emb" in options:
        options["use_abs_pos_emb"] = bool(getattr(net, "has_abs_pos_emb", True))
    if not _has_cross(net):
        options = {k: v for k, v in options.items() if not k.startswith("attn_layers.cross_")}
    return options


def _default_options(net: TransformerWrapper) -> dict[str, Any]:
    """The options of a model of the same classes built with only its required keywords."""
    try:
        with torch.device("meta"):
            stack = type(net.attn_layers)(dim=net.attn_layers.dim, depth=net.attn_layers.depth)
            default = type(net)(
                num_tokens=net.num_tokens, max_seq_len=net.max_seq_len, attn_layers=stack
            )
        return resolved_options(default)
    except Exception:  # another wrapper or stack: every option counts as changed
        return {}


def _part(name: str, kinds: dict[int, str]) -> str:
    """The part of the model a parameter belongs to, by its name."""
    head = name.split(".")[0]
    simple = {"token_emb": "token embedding", "pos_emb": "absolute positions"}
    simple.update({"to_logits": "output head", "memory_tokens": "memory tokens"})
    if head in simple:
        return simple[head]
    parts = name.split(".")
    if parts[:2] == ["attn_layers", "layers"] and parts[2].isdigit():
        return f"{_KINDS.get(kinds.get(int(parts[2]), ''), 'other')} layers"
    if parts[:2] == ["attn_layers", "final_norm"]:
        return "final norm"
    if parts[:2] in (["attn_layers", "rotary"], ["attn_layers", "attn_bias"]):
        return "relative positions"
    return "other"


def parameter_parts(net: TransformerWrapper) -> dict[str, int]:
    """Parameters by part of the model (a tied weight counted once, where it first appears)."""
    kinds = {i: getattr(b, "layer_type", "?") for i, b in enumerate(net.attn_layers.layers)}
    parts: dict[str, int] = {}
    for name, p in net.named_parameters():
        part = _part(name, kinds)
        parts[part] = parts.get(part, 0) + p.numel()
    return parts


def _positions(net: TransformerWrapper) -> str:
    """Which positions the model uses, as resolved."""
    found = []
    if getattr(net, "has_abs_pos_emb", False):
        kind = type(getattr(net, "pos_emb", None)).__name__
        found.append(f"absolute ({kind}, {net.max_seq_len} positions)")
    rotary = getattr(net.attn_layers, "rotary", None)
    if rotary is not None:
        head = getattr(rotary, "head_dim", None)
        of = f" of {head}" if head else ""
        found.append(f"rotary (on {rotary.dim}{of} dims of each head, theta {rotary.theta:g})")
    bias = getattr(net.attn_layers, "attn_bias", None)
    if bias is not None:
        found.append(f"attention bias ({type(bias).__name__})")
    return ", ".join(found) or "none (the model sees no positions)"


def attention_paths(net: TransformerWrapper) -> list[str]:
    """One line per layer of the stack: its kind and, for attention, the path it runs."""
    lines = []
    for i, block in enumerate(net.attn_layers.layers):
        kind = getattr(block, "layer_type", "?")
        if kind == "f":
            lines.append(f"{i:>3}  feedforward")
            continue
        branch = getattr(block, "branch", None)
        path = _PATHS.get(getattr(branch, "path", ""), "attention (path unknown)")
        reasons = tuple(getattr(branch, "explicit_reasons", ()) or ())
        because = f" (because of {', '.join(map(str, reasons))})" if reasons else ""
        lines.append(f"{i:>3}  {_KINDS.get(kind, 'self-attention'):<15} {path}{because}")
    return lines


def _print_training(folder: Any) -> None:
    run_dir = run_dir_of(folder)
    if run_dir is None:
        return
    evals = [r for r in read_log(run_dir / LOG_FILE) if "val_bpb" in r]
    step = int(folder.name.split("_")[-1])
    at = [r for r in evals if r.get("step") == step]
    score = f", validation bits per byte {at[-1]['val_bpb']:.4f}" if at else ""
    print(f"training: step {step} of run {run_dir}{score}")


def _print_options(net: TransformerWrapper, everything: bool) -> None:
    options = resolved_options(net)
    defaults = {} if everything else _default_options(net)
    shown = {
        k: v
        for k, v in options.items()
        if everything or k in _ALWAYS or k not in defaults or defaults[k] != v
    }
    changed = "options that differ from the defaults (--all: every option):"
    print("every option:" if everything else changed)
    for key, value in shown.items():
        print(f"  {key} = {json.dumps(value)}")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    folder, lm = load_model(args.dir, "cpu")
    saved = read_config(folder)
    net = net_of(lm)
    print(f"model folder: {folder}")
    wrapper = saved.get("wrapper", {}).get("class")
    cls = f"{wrapper}({saved['class']})" if wrapper else saved["class"]
    print(f"class: {cls}, saved by anyformer {saved.get('anyformer_version', '?')}")
    _print_training(folder)
    print(f"parameters: {count_parameters(net):,}")
    for part, count in parameter_parts(net).items():
        print(f"  {part:<24} {count:>12,}")
    if "output head" not in parameter_parts(net) and getattr(net, "to_logits", None) is not None:
        print("  (the output head is tied to the token embedding)")
    print(f"positions: {_positions(net)}")
    _print_options(net, args.all)
    print("layers:")
    for line in attention_paths(net):
        print(line)
    return 0
