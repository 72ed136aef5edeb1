"""Compiled decoding: ``generate(compile=True)`` against eager cached ``generate``.

The model is bench_core.py's Llama-style Decoder (14.4M parameters with its defaults)::

    TransformerWrapper(num_tokens=256, max_seq_len=1024, use_abs_pos_emb=False,
        attn_layers=Decoder(dim=384, depth=6, heads=6, attn_flash=True, rotary_pos_emb=True,
                            rotary_emb_dim=64, use_rmsnorm=True, ff_glu=True, ff_swish=True,
                            ff_no_bias=True, attn_kv_heads=2))

Cases (greedy, prompt 16 tokens, 256 new tokens, batch --batch, default 1)
    eager       generate(..., temperature=0.0) (the KV-cached eager path)
    compiled    generate(..., temperature=0.0, compile=True), with --compile; its first call
                (compiling the prefill and the decode step) is timed apart

Both cases run interleaved (the order alternates per repetition); the script checks that the
two return identical tokens and prints tokens/s of each and their ratio. Example::

    python benchmarks/bench_compiled.py --compile --threads 1 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper


def build(args: argparse.Namespace, device: torch.device) -> AutoregressiveWrapper:
    """bench_core.py's Llama-style model, seeded."""
    torch.manual_seed(args.seed)
    stack = Decoder(
        dim=args.dim, depth=args.depth, heads=args.heads, attn_flash=True, rotary_pos_emb=True,
        rotary_emb_dim=args.dim // args.heads, use_rmsnorm=True, ff_glu=True, ff_swish=True,
        ff_no_bias=True, attn_kv_heads=args.kv_heads,
    )  # fmt: skip
    net = TransformerWrapper(
        num_tokens=args.num_tokens, max_seq_len=1024, use_abs_pos_emb=False, attn_layers=stack
    )
    return AutoregressiveWrapper(net).to(device).eval()


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds one call takes (device synchronised), and its output."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--compile", action="store_true", help="add the compiled case")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--reps", type=int, default=3, help="timed calls per case")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per case")
    p.add_argument("--batch", type=int, default=1, help="prompts per call")
    p.add_argument("--prompt-len", type=int, default=16, help="tokens per prompt")
    p.add_argument("--gen-len", type=int, default=256, help="new tokens per prompt")
    p.add_argument("--dim", type=int, default=384, help="model width")
    p.add_argument("--depth", type=int, default=6, help="layers")
    p.add_argument("--heads", type=int, default=6, help="query heads")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads")
    p.add_argument("--num-tokens", type=int, default=256, help="vocabulary")
    p.add_argument("--seed", type=int, default=0, help="weights and prompts")
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lm = build(args, device)
    g = torch.Generator().manual_seed(args.seed + 1)
    prompts = torch.randint(0, args.num_tokens, (args.batch, args.prompt_len), generator=g)
    prompts = prompts.to(device)
    cases: dict[str, Callable[[], Any]] = {
        "eager": lambda: lm.generate(prompts, args.gen_len, temperature=0.0)
    }
    result: dict[str, Any] = {"threads": args.threads, "device": args.device}
    if args.compile:
        cases["compiled"] = lambda: lm.generate(
            prompts, args.gen_len, temperature=0.0, compile=True
        )
        result["compile_first_call_s"], _ = timed(cases["compiled"], device)
    outputs = {name: fn() for name, fn in cases.items() for _ in range(args.warmup)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for rep in range(args.reps):
        order = list(cases) if rep % 2 == 0 else list(reversed(cases))
        for name in order:
            seconds, outputs[name] = timed(cases[name], device)
            times[name].append(seconds)
    tokens = args.batch * args.gen_len
    for name, ts in times.items():
        result[f"{name}_tokens_per_s"] = tokens / statistics.median(ts)
    if args.compile:
        result["identical_tokens"] = bool(torch.equal(outputs["eager"], outputs["compiled"]))
        result["ratio_compiled_over_eager"] = (
            result["compiled_tokens_per_s"] / result["eager_tokens_per_s"]
        )
    result["load_average"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    for key, value in result.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result.get("identical_tokens", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
