"""Benchmark batched greedy generation: prompts of different lengths, one batch, on the CPU.

One Llama-style model (RMSNorm, rotary, SwiGLU without biases, grouped-query attention; the
14.4M-parameter shape of ``bench_core.py`` by default) is built with random weights as a Hugging
Face ``LlamaForCausalLM``; anyformer gets the very same weights through ``anyformer.convert.from_hf``
and x-transformers through ``to_x_transformers_state_dict``. Each library then generates
``--new-tokens`` greedy tokens after ``--batch`` prompts whose lengths are spread over
``[--min-prompt, --max-prompt]``, in its own batched API:

* anyformer: ``generate(list_of_prompts, n, temperature=0.0)`` (KV cache, rows right-padded
  internally, each row at its own positions);
* x-transformers 1.28.2 (the bench extra): ``generate(right_padded, n, temperature=0.0,
  prompt_lens=lens)``, which left-aligns the rows itself;
* x-transformers 2.x, when installed in a separate folder (``--xt2-path``, e.g. ``pip install
  --target /tmp/xt2 "x-transformers==2.*"``): the same call, in a subprocess;
* Hugging Face: ``generate`` on left-padded ids with their attention mask (dynamic KV cache).

Before timing, anyformer's batched rows are checked against each prompt decoded alone
(``rows_equal_alone``: they must all be identical) and every peer's tokens are compared row by
row with anyformer's (float32 rounding differs between the libraries, so a row may diverge
after a near-tie; the count is reported). The libraries' calls are interleaved, medians
reported (x-transformers 2.x runs in its own process, after the others). ``--eos`` also times
anyformer with an eos token that ends rows at different steps, against the same call keeping
every row in the batch (the finished rows' compute that dropping them saves). ``--clock cpu``
times each call by the CPU time of its thread instead of the wall clock (one thread only): on a
machine other processes share, the time they take the core away is then left out.

    python benchmarks/bench_batched.py --threads 1 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anyformer import AutoregressiveWrapper
from anyformer.convert import from_hf, to_x_transformers_state_dict

ANY, XT, XT2, HF = "anyformer", "x-transformers-1.28", "x-transformers-2", "huggingface"


def xt_expressible_state_dict(ours: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``ours`` (converted from Hugging Face) in x-transformers 1.28.2's layout, through a twin
    with the same tensors whose options 1.28.2 expresses: the feedforward width as ``ff_mult``
    (the benchmark's x-transformers model passes the same) and its own norm epsilon (RMSNorm's
    eps differs from Hugging Face's 1e-6 by rounding only: the token agreement reports it)."""
    config = ours.config_dict()
    stack = config["attn_layers"]
    ff = stack["feedforward"]
    if ff["inner_dim"] is not None:
        ff["mult"], ff["inner_dim"] = ff["inner_dim"] / stack["dim"], None
    stack["norm"]["norm_eps"] = None
    twin = type(ours).from_config(config)
    twin.load_state_dict(ours.state_dict())
    return to_x_transformers_state_dict(twin)


def greedy(lm: AutoregressiveWrapper, prompts: Any, n: int, **kwargs: Any) -> torch.Tensor:
    """anyformer's greedy tokens (without the intermediates, if asked for)."""
    out = lm.generate(prompts, n, temperature=0.0, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="prompts per batch")
    p.add_argument("--new-tokens", type=int, default=128, help="greedy tokens per row")
    p.add_argument("--min-prompt", type=int, default=8, help="shortest prompt")
    p.add_argument("--max-prompt", type=int, default=64, help="longest prompt")
    p.add_argument("--reps", type=int, default=3, help="timed calls per library")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per library first")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--dim", type=int, default=384, help="model width")
    p.add_argument("--depth", type=int, default=6, help="blocks")
    p.add_argument("--heads", type=int, default=6, help="query heads")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads (grouped-query)")
    p.add_argument("--ff-inner", type=int, default=1536, help="SwiGLU hidden width")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size")
    p.add_argument("--init-std", type=float, default=0.05, help="random weights' std")
    p.add_argument("--seed", type=int, default=0, help="weights and prompts")
    p.add_argument("--impls", nargs="+", default=[ANY, XT, XT2, HF], help="libraries to time")
    p.add_argument("--xt2-path", default="/tmp/xt2", help="folder holding x-transformers 2.x")
    p.add_argument("--eos", action="store_true", help="also time eos with rows dropped or kept")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="time calls by the wall clock, or by their thread's CPU time (with --threads 1)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu needs --threads 1 (it counts the calling thread's CPU time)")
    return args


def clock(args: argparse.Namespace) -> Callable[[], float]:
    """The clock calls are timed by: the wall clock, or this thread's CPU time."""
    return time.thread_time if args.clock == "cpu" else time.perf_counter


# --------------------------------------------------------------------------------------
# models and prompts


def build_models(args: argparse.Namespace) -> tuple[Any, torch.nn.Module]:
    """(Hugging Face LlamaForCausalLM, anyformer TransformerWrapper) holding the same weights."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=args.dim, num_hidden_layers=args.depth, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, intermediate_size=args.ff_inner,
        vocab_size=args.vocab, max_position_embeddings=1024, initializer_range=args.init_std,
        bos_token_id=None, eos_token_id=None, pad_token_id=0, rms_norm_eps=1e-6,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    hf = transformers.LlamaForCausalLM(config).eval()
    return hf, from_hf(hf).eval()


def xt_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """x-transformers keywords of the same model (1.28 and 2.x alike)."""
    return dict(
        dim=args.dim, depth=args.depth, heads=args.heads, attn_dim_head=args.dim // args.heads,
        rotary_pos_emb=True, rotary_emb_dim=args.dim // args.heads, use_rmsnorm=True,
        ff_glu=True, ff_swish=True, ff_no_bias=True, attn_kv_heads=args.kv_heads,
        ff_mult=args.ff_inner / args.dim, attn_flash=True,
    )  # fmt: skip


def build_xt(xt: Any, args: argparse.Namespace, state: dict[str, torch.Tensor]) -> Any:
    net = xt.TransformerWrapper(
        num_tokens=args.vocab, max_seq_len=1024, use_abs_pos_emb=False,
        attn_layers=xt.Decoder(**xt_keywords(args)),
    )  # fmt: skip
    net.load_state_dict(state)
    return xt.AutoregressiveWrapper(net).eval()


def make_prompts(args: argparse.Namespace) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed + 1)
    lens = torch.linspace(args.min_prompt, args.max_prompt, args.batch).round().long()
    return [torch.randint(1, args.vocab, (int(n),), generator=g) for n in lens]


def padded(prompts: list[torch.Tensor], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, max_len) ids padded with 0 on the left or the right, and the keep mask."""
    n = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), n, dtype=torch.long)
    mask = torch.zeros(len(prompts), n, dtype=torch.long)
    for i, p in enumerate(prompts):
        cols = slice(n - len(p), n) if left else slice(0, len(p))
        ids[i, cols], mask[i, cols] = p, 1
    return ids, mask


# --------------------------------------------------------------------------------------
# the calls


def calls(hf: Any, ours: torch.nn.Module, prompts: list[torch.Tensor], args: argparse.Namespace):
    """One zero-argument generate call per library: -> (b, new_tokens) new tokens."""
    n = args.new_tokens
    lm = AutoregressiveWrapper(ours)
    right, _ = padded(prompts, left=False)
    lens = torch.tensor([len(p) for p in prompts])
    out: dict[str, Callable[[], torch.Tensor]] = {}
    if ANY in args.impls:
        out[ANY] = lambda: greedy(lm, prompts, n)
    if XT in args.impls:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import x_transformers as xt  # type: ignore[import-untyped]
        xlm = build_xt(xt, args, xt_expressible_state_dict(ours))
        out[XT] = lambda: xlm.generate(right, n, temperature=0.0, prompt_lens=lens, cache_kv=True)
    if HF in args.impls:
        left, mask = padded(prompts, left=True)

        def hf_call() -> torch.Tensor:
            ids = hf.generate(
                left, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                pad_token_id=0, eos_token_id=None, use_cache=True,
            )  # fmt: skip
            return ids[:, left.shape[1] :]

        out[HF] = hf_call
    return out


def interleaved(
    cases: dict[str, Callable[[], Any]],
    reps: int,
    warmup: int,
    now: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per case (by the clock `now`); in each repetition every case runs once,
    order rotating."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = now()
            cases[name]()
            times[name].append(now() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, Any]:
    """Rows identical to anyformer's, and the first differing step of each other row."""
    same = (ours == theirs).all(dim=1)
    first_diff = [
        int((ours[i] != theirs[i]).int().argmax()) for i in range(len(ours)) if not same[i]
    ]
    return {"rows_identical": f"{int(same.sum())}/{len(ours)}", "first_diff_steps": first_diff}


# --------------------------------------------------------------------------------------
# x-transformers 2.x in its own process


_XT2_SCRIPT = r"""
import json, statistics, sys, time, warnings
import torch
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
import x_transformers as xt
spec = torch.load(sys.argv[2])
torch.set_num_threads(spec["threads"])
net = xt.TransformerWrapper(num_tokens=spec["vocab"], max_seq_len=1024, use_abs_pos_emb=False,
                            attn_layers=xt.Decoder(**spec["keywords"]))
# 2.x norms add 1 to their stored gain (unit_offset): the 1.28 layout's gains are gains - 1 there
offset = {n + ".g" for n, m in net.named_modules() if getattr(m, "unit_offset", False)}
state = {k: v - 1.0 if k in offset else v for k, v in spec["state"].items()}
# 2.x rotates adjacent pairs (2j, 2j + 1), 1.28 the halves (j, j + d/2): the same attention
# scores once every head's query and key rows are interleaved that way
d = spec["keywords"]["attn_dim_head"]
pairs = torch.stack((torch.arange(d // 2), torch.arange(d // 2) + d // 2), dim=1).flatten()
for k in [k for k in state if k.endswith(("to_q.weight", "to_k.weight"))]:
    w = state[k]
    state[k] = w.view(-1, d, w.shape[-1])[:, pairs].reshape(w.shape)
missing, unexpected = net.load_state_dict(state, strict=False)
lm = xt.AutoregressiveWrapper(net).eval()
call = lambda: lm.generate(spec["right"], spec["n"], temperature=0.0, prompt_lens=spec["lens"],
                           cache_kv=True)
now = time.thread_time if spec["clock"] == "cpu" else time.perf_counter
for _ in range(spec["warmup"]):
    call()
times = []
for _ in range(spec["reps"]):
    t0 = now(); out = call(); times.append(now() - t0)
print(json.dumps({"median_s": statistics.median(times), "tokens": out.tolist(),
                  "version": getattr(xt, "__version__", "2.x"), "missing": missing,
                  "unexpected": unexpected}))
"""


def run_xt2(ours: torch.nn.Module, prompts: list[torch.Tensor], args: argparse.Namespace):
    """x-transformers 2.x timed in a subprocess: -> (median seconds, tokens, info) or None."""
    if not (Path(args.xt2_path) / "x_transformers").is_dir():
        return None
    right, _ = padded(prompts, left=False)
    spec = dict(
        threads=args.threads, vocab=args.vocab, keywords=xt_keywords(args),
        state=xt_expressible_state_dict(ours), right=right,
        lens=torch.tensor([len(p) for p in prompts]), n=args.new_tokens, reps=args.reps,
        warmup=args.warmup, clock=args.clock,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "spec.pt")
        torch.save(spec, path)
        done = subprocess.run(
            [sys.executable, "-c", _XT2_SCRIPT, args.xt2_path, path],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["tokens"] = torch.tensor(result["tokens"])
    return result


# --------------------------------------------------------------------------------------
# eos: rows dropped from the batch vs kept


def bench_eos(ours: torch.nn.Module, prompts: list[torch.Tensor], ref: torch.Tensor, args) -> dict:
    """Time anyformer with an eos that ends rows at staggered steps, rows dropped vs kept."""
    firsts = {
        t: [row.tolist().index(t) for row in ref if t in row.tolist()] for t in range(1, args.vocab)
    }
    eos = max(firsts, key=lambda t: (len(firsts[t]), len(set(firsts[t]))))
    lm = AutoregressiveWrapper(ours)
    n = args.new_tokens
    cases = {
        "rows-dropped": lambda: greedy(lm, prompts, n, eos_token=eos),
        # return_intermediates keeps every row (the returned cache holds them all)
        "rows-kept": lambda: greedy(lm, prompts, n, eos_token=eos, return_intermediates=True),
    }
    same = torch.equal(cases["rows-dropped"](), cases["rows-kept"]())
    times = interleaved(cases, args.reps, args.warmup, clock(args))
    return {
        "eos_token": eos,
        "first_eos_steps": sorted(firsts[eos]),
        "same_tokens": same,
        "median_s": times,
        "kept_over_dropped": times["rows-kept"] / times["rows-dropped"],
    }


# --------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    hf, ours = build_models(args)
    prompts = make_prompts(args)
    n, b = args.new_tokens, args.batch
    lm = AutoregressiveWrapper(ours)
    with torch.inference_mode():
        batched = greedy(lm, prompts, n)
        alone = torch.stack([greedy(lm, p, n) for p in prompts])
        cases = calls(hf, ours, prompts, args)
        tokens = {name: call() for name, call in cases.items()}
        medians = interleaved(cases, args.reps, args.warmup, clock(args))
        xt2 = run_xt2(ours, prompts, args) if XT2 in args.impls else None
        eos = bench_eos(ours, prompts, batched, args) if args.eos else None
    rows_alone = int((batched == alone).all(dim=1).sum())
    result: dict[str, Any] = {
        "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 2),
        "batch": b,
        "prompt_lens": [len(p) for p in prompts],
        "new_tokens": n,
        "threads": args.threads,
        "clock": args.clock,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_avg": os.getloadavg(),
        "rows_equal_alone": f"{rows_alone}/{b}",
        "tokens_per_s": {name: b * n / t for name, t in medians.items()},
        "agreement_with_anyformer": {
            name: agreement(tokens[ANY], t) for name, t in tokens.items() if name != ANY
        },
    }
    if isinstance(xt2, dict) and "median_s" in xt2:
        result["tokens_per_s"][XT2] = b * n / xt2["median_s"]
        result["agreement_with_anyformer"][XT2] = agreement(tokens[ANY], xt2["tokens"])
        result["xt2_version"] = xt2["version"]
    elif xt2 is not None:
        result["xt2_error"] = xt2.get("error")
    rates = result["tokens_per_s"]
    result["anyformer_speedup"] = {
        name: rates[ANY] / rate for name, rate in rates.items() if name != ANY and ANY in rates
    }
    if eos is not None:
        result["eos"] = eos
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0 if rows_alone == b else 1


if __name__ == "__main__":
    sys.exit(main())
