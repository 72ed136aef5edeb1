"""Benchmark decoding in fewer bytes per weight: fp32 vs bf16 vs weight-only int8 / int4.

Three parts (``--parts``, all by default):

1. ``kernels``: one matrix-vector sweep (batch 1) over the linear weights of a GPT-2-124M-shaped
   Llama-style model (12 x [qkv 2304x768, out 768x768, SwiGLU in 6144x768, out 768x3072] and
   the 50304x768 output head): fp32 (F.linear), bf16 (F.linear, bf16 activations; and from
   oneDNN's packed layout, as ``prepare_for_decoding(dtype="bf16")`` multiplies), int8
   weight-only (aten ``_weight_int8pack_mm``), int4 groupwise weight-only (aten
   ``_weight_int4pack_mm_for_cpu``, group 32) and, for reference only, fbgemm's dynamic int8
   (``quantized::linear_dynamic``: activations quantized too, on a deprecated PyTorch API, so
   anyformer does not use it). Best of ``--reps`` sweeps.
2. ``decode``: cached greedy ``generate`` at batch 1 (prompt ``--prompt-len``, ``--gen-len`` new
   tokens) with ``anyformer.quantize.prepare_for_decoding`` in each format, on the 124M shape
   (dim 768, depth 12, heads 12, rotary, RMSNorm, SwiGLU, no biases, vocab 50304, untied head)
   and on bench_core.py's Llama-style model (dim 384, depth 6, heads 6, 2 kv heads, vocab 256).
   Median of ``--reps`` runs after one warm-up, formats interleaved; tokens/s and the ratio to
   fp32 (today's path). Greedy tokens of every format are compared with fp32's (reported as the
   count of equal leading tokens: random weights make near-ties, so lower precision may differ).
3. ``quality``: validation bits per byte of a trained run (``--run``, e.g. the quick-start
   model of ``anyformer train --out DIR``) in each format, on the run's validation windows.

Run ``python benchmarks/bench_lowp.py --help``. Use ``--threads 1`` on a shared machine and
report its load (``uptime``): the figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper
from anyformer.quantize import (
    Int4Linear,
    Int8Linear,
    PackedBf16Linear,
    packed_bf16_supported,
    prepare_for_decoding,
)

FORMATS: dict[str, tuple[str | None, str | None]] = {
    "fp32": (None, None),
    "bf16": ("bf16", None),
    "int8": (None, "int8"),
    "int4": (None, "int4"),
    "bf16+int4": ("bf16", "int4"),
}

SHAPE_124M = [(2304, 768), (768, 768), (6144, 768), (768, 3072)] * 12 + [(50304, 768)]

LLAMA = dict(rotary_pos_emb=True, use_rmsnorm=True, ff_glu=True, ff_swish=True, ff_no_bias=True)


def best_of(reps: int, fn: Callable[[], Any]) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _bf16(linear: torch.nn.Linear) -> torch.nn.Linear:
    out = torch.nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
    out.weight = torch.nn.Parameter(linear.weight.detach().bfloat16(), requires_grad=False)
    return out


def kernels(args: argparse.Namespace) -> dict[str, float]:
    """ms per matrix-vector sweep over the 124M shape's linear weights, per kernel."""
    torch.manual_seed(0)
    linears = [torch.nn.Linear(i, o, bias=False) for o, i in SHAPE_124M]
    xs = {i: torch.randn(1, i) for i in (768, 3072)}
    sweeps: dict[str, list[Callable[[], Any]]] = {}
    sweeps["fp32"] = [lambda m=m: F.linear(xs[m.in_features], m.weight) for m in linears]
    bf = [(m.weight.detach().bfloat16(), m.in_features) for m in linears]
    sweeps["bf16"] = [lambda w=w, i=i: F.linear(xs[i].bfloat16(), w).float() for w, i in bf]
    if packed_bf16_supported():
        pk = [PackedBf16Linear.from_linear(_bf16(m)) for m in linears]
        sweeps["bf16 packed (oneDNN)"] = [lambda m=m: m(xs[m.in_features].bfloat16()) for m in pk]
    q8 = [Int8Linear.from_linear(m) for m in linears]
    sweeps["int8 (aten _weight_int8pack_mm)"] = [lambda m=m: m(xs[m.in_features]) for m in q8]
    q4 = [Int4Linear.from_linear(m, 32) for m in linears]
    sweeps["int4 g32 (aten _weight_int4pack_mm_for_cpu)"] = [
        lambda m=m: m(xs[m.in_features]) for m in q4
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated in PyTorch
        packs = []
        for m in linears:
            w = m.weight.detach()
            zeros = torch.zeros(w.shape[0], dtype=torch.long)
            qw = torch.quantize_per_channel(w, w.abs().amax(1) / 127, zeros, 0, torch.qint8)
            packs.append((torch.ops.quantized.linear_prepack(qw, None), m.in_features))
    sweeps["int8 dyn-act (fbgemm, reference only)"] = [
        lambda p=p, i=i: torch.ops.quantized.linear_dynamic(xs[i], p, True) for p, i in packs
    ]
    out = {}
    with torch.inference_mode():
        for name, fns in sweeps.items():
            out[name] = 1e3 * best_of(args.reps, lambda fns=fns: [f() for f in fns])
            print(f"  {name:45s} {out[name]:8.2f} ms", flush=True)
    return out


def model(name: str) -> AutoregressiveWrapper:
    torch.manual_seed(0)
    if name == "124m":
        stack = Decoder(dim=768, depth=12, heads=12, **LLAMA)
        net = TransformerWrapper(num_tokens=50304, max_seq_len=1024, attn_layers=stack)
    else:
        stack = Decoder(dim=384, depth=6, heads=6, attn_kv_heads=2, rotary_emb_dim=64, **LLAMA)
        net = TransformerWrapper(num_tokens=256, max_seq_len=1024, attn_layers=stack)
    return AutoregressiveWrapper(net).eval()


def decode(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """tokens/s of cached greedy generation at batch 1 in each format."""
    base = model(name)
    params = sum(p.numel() for p in base.parameters())
    print(f"  {name}: {params / 1e6:.1f}M parameters", flush=True)
    prompt = torch.randint(0, base.net.num_tokens, (1, args.prompt_len))
    models = {f: prepare_for_decoding(base, *FORMATS[f]) for f in args.formats}
    tokens = {}
    for f, m in models.items():  # warm-up, and the tokens
        tokens[f] = m.generate(prompt, args.gen_len, temperature=0.0)[0]
    times: dict[str, list[float]] = {f: [] for f in models}
    for _ in range(args.reps):
        for f, m in models.items():
            t = time.perf_counter()
            m.generate(prompt, args.gen_len, temperature=0.0)
            times[f].append(time.perf_counter() - t)
    rows = {}
    ref = tokens.get("fp32")
    for f in models:
        tps = args.gen_len / statistics.median(times[f])
        same = args.gen_len if ref is None else int((tokens[f] == ref).cumprod(0).sum())
        rows[f] = {"tokens_per_s": tps, "same_leading_tokens": same}
    fp32 = rows.get("fp32", {}).get("tokens_per_s")
    for f, r in rows.items():
        ratio = f"{r['tokens_per_s'] / fp32:5.2f}x fp32" if fp32 else ""
        print(
            f"  {f:10s} {r['tokens_per_s']:8.1f} tok/s  {ratio}  "
            f"(greedy = fp32 for {r['same_leading_tokens']}/{args.gen_len} tokens)",
            flush=True,
        )
    return {"params": params, "formats": rows}


def quality(args: argparse.Namespace) -> dict[str, float]:
    """Validation bits per byte of the run's model in each format."""
    from anyformer.cli.common import load_model, saved_train_config
    from anyformer.cli.config import TrainConfig
    from anyformer.cli.data import LN2, evaluate, load_data
    from anyformer.cli.distributed import Dist

    folder, lm = load_model(args.run, "cpu")
    config = saved_train_config(folder) or TrainConfig()
    if args.eval_batches is not None:
        config = dataclasses.replace(config, eval_batches=args.eval_batches)
    config = dataclasses.replace(config, grad_accum=1)
    data = load_data(config)
    device = torch.device("cpu")
    dist = Dist(rank=0, world=1, local_rank=0, device=device)
    out = {}
    for f in args.formats:
        m = prepare_for_decoding(lm, *FORMATS[f])
        with torch.no_grad():
            out[f] = evaluate(m, data.val, config, dist, device) / LN2
        rel = f"{100 * (out[f] / out['fp32'] - 1):+.2f}% vs fp32" if "fp32" in out else ""
        print(f"  {f:10s} {out[f]:.4f} bits per byte  {rel}", flush=True)
    windows = config.eval_batches * config.batch_size
    print(f"  ({windows} validation windows of {config.seq_len} bytes; model {folder})")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["kernels", "decode", "quality"],
                   choices=["kernels", "decode", "quality"], help="what to run")  # fmt: skip
    p.add_argument("--models", nargs="+", default=["124m", "14m"], choices=["124m", "14m"],
                   help="decode: the 124M shape and/or bench_core's Llama-style model")  # fmt: skip
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS),
                   help="formats to compare (fp32 first: the others are reported against it)")  # fmt: skip
    p.add_argument("--run", default=None, help="quality: a run or model folder to evaluate")
    p.add_argument("--eval-batches", type=int, default=None, help="quality: validation batches")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions")
    p.add_argument("--prompt-len", type=int, default=16, help="decode: prompt bytes/tokens")
    p.add_argument("--gen-len", type=int, default=64, help="decode: new tokens per generate")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--json", default=None, help="write the results as JSON to this path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"threads": args.threads, "torch": torch.__version__}
    if "kernels" in args.parts:
        print("matrix-vector sweep over the 124M shape's weights (batch 1):", flush=True)
        results["kernels_ms"] = kernels(args)
    if "decode" in args.parts:
        print(f"cached greedy generate, batch 1, prompt {args.prompt_len}, {args.gen_len} new:")
        results["decode"] = {name: decode(args, name) for name in args.models}
    if "quality" in args.parts:
        if args.run is None:
            print("quality: skipped (no --run)")
        else:
            print(f"validation bits per byte of {args.run}:")
            results["quality_bpb"] = quality(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
