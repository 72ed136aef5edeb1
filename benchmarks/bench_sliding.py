"""Sliding-window attention: forward at length n with ``attn_sliding_window=W`` against full causal
attention, the same model otherwise (the same weights)::

    TransformerWrapper(num_tokens=256, max_seq_len=n, use_abs_pos_emb=False,
        attn_layers=Decoder(dim=64, depth=2, heads=2, rotary_pos_emb=True, use_rmsnorm=True,
                            [attn_sliding_window=W]))

Cases (batch 1, no grad, eval; defaults n = 8192, W = 256)
    full        causal attention over all n keys (SDPA's causal kernel)
    sliding     the W keys ending at each query, blockwise (O(n W))

Each thread setting (``--threads``, default ``1,default``: one thread, then torch's default)
runs both cases interleaved ``--reps`` times and reports the median seconds and the speedup,
in wall time and in process CPU time (steadier on a shared machine; for one thread the same
work), and the attention kernels alone (``kernel``: SDPA's causal kernel against the blockwise
one on random inputs of the model's head shape).
The script first checks, at ``--check-len``, that the sliding model equals the same weights with
``attn_max_attend_past=W-1`` (masked full attention, the same window). Example::

    python benchmarks/bench_sliding.py --threads 1,default --reps 3

``--dry-run``: n = 512, W = 32, one repetition (tests run it on CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from anyformer import Decoder, TransformerWrapper


def build(args: argparse.Namespace, **attn: Any) -> TransformerWrapper:
    """The benchmark model, seeded (the same weights whatever `attn` sets)."""
    torch.manual_seed(args.seed)
    stack = Decoder(
        dim=args.dim, depth=args.depth, heads=args.heads, rotary_pos_emb=True, use_rmsnorm=True,
        **attn,
    )  # fmt: skip
    model = TransformerWrapper(
        num_tokens=256, max_seq_len=args.n, use_abs_pos_emb=False, attn_layers=stack
    )
    return model.eval()


def check(args: argparse.Namespace, sliding: TransformerWrapper) -> float:
    """Max |sliding - masked reference| over the logits of a `check_len` sequence."""
    reference = build(args, attn_max_attend_past=args.window - 1)
    reference.load_state_dict(sliding.state_dict())
    ids = torch.randint(0, 256, (1, args.check_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (sliding(ids) - reference(ids)).abs().max().item()


def timings(
    args: argparse.Namespace, models: dict[str, TransformerWrapper]
) -> dict[str, dict[str, float]]:
    """Median wall and process-CPU seconds of one forward per case, the cases interleaved (on a
    shared machine the CPU seconds of a one-thread run are the steadier figure)."""
    ids = torch.randint(0, 256, (1, args.n), generator=torch.Generator().manual_seed(2))
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(ids[:, : min(args.n, 512)])  # warm-up
        for rep in range(args.reps):
            order = list(models) if rep % 2 == 0 else list(reversed(models))
            for name in order:
                start, start_cpu = time.perf_counter(), time.process_time()
                models[name](ids)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {
        "wall": {name: statistics.median(values) for name, values in wall.items()},
        "cpu": {name: statistics.median(values) for name, values in cpu.items()},
    }


def kernel_timings(args: argparse.Namespace) -> dict[str, float]:
    """Median process-CPU seconds of the attention kernels alone on random (1, heads, n,
    dim / heads) queries, keys and values: SDPA's causal kernel against the blockwise one."""
    from anyformer.nn.sliding_window import banded_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, args.heads, args.n, args.dim // args.heads, generator=g)
               for _ in range(3))  # fmt: skip
    cases = {
        "full": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "sliding": lambda: banded_attention(q, k, v, args.window),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for rep in range(args.reps):
        for name in cases if rep % 2 == 0 else reversed(cases):
            start = time.process_time()
            cases[name]()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8192, help="sequence length")
    parser.add_argument("--window", type=int, default=256, help="sliding window W")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", default="1,default", help="comma-separated; 'default'")
    parser.add_argument("--check-len", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="n=512, W=32, one repetition")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.n, args.window, args.reps, args.check_len = 512, 32, 1, 512
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the figures (also printed as JSON by main)."""
    args = parse(argv)
    default_threads = torch.get_num_threads()
    models = {
        "full": build(args),
        "sliding": build(args, attn_sliding_window=args.window),
    }
    paths = models["sliding"].capabilities()["attention"]
    result: dict[str, Any] = {
        "n": args.n,
        "window": args.window,
        "dry_run": args.dry_run,
        "window_kernels": [p.get("window_kernel") for p in paths],
        "max_abs_diff_vs_masked": check(args, models["sliding"]),
        "threads": {},
    }
    try:
        for setting in args.threads.split(","):
            threads = default_threads if setting == "default" else int(setting)
            torch.set_num_threads(threads)
            seconds = timings(args, models)
            wall, cpu = seconds["wall"], seconds["cpu"]
            result["threads"][setting] = {
                "threads": threads,
                "full_s": wall["full"],
                "sliding_s": wall["sliding"],
                "speedup": wall["full"] / wall["sliding"],
                "full_cpu_s": cpu["full"],
                "sliding_cpu_s": cpu["sliding"],
                "cpu_speedup": cpu["full"] / cpu["sliding"],
            }
            kernel = kernel_timings(args)
            result["threads"][setting]["kernel"] = {
                "full_cpu_s": kernel["full"],
                "sliding_cpu_s": kernel["sliding"],
                "cpu_speedup": kernel["full"] / kernel["sliding"],
            }
    finally:
        torch.set_num_threads(default_threads)
    return result


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(run(argv), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
