"""Benchmark anyformer against x-transformers 1.28.2 on the default Decoder config.

Both libraries build the same model from identical keywords::

    TransformerWrapper(num_tokens=256, max_seq_len=1024,
                       attn_layers=Decoder(dim=384, depth=6, heads=6, attn_flash=True))

and every case runs the two implementations interleaved in one process (the order
alternates from one repetition to the next) so that they share machine noise.

Cases
    train   AutoregressiveWrapper loss + backward + AdamW step, batch 8 x 256 tokens
    fwd     TransformerWrapper forward under torch.inference_mode, batch 8 x 512 tokens
    gen-bN  AutoregressiveWrapper.generate, greedy (temperature=0), cache_kv=True,
            prompt 16 tokens, 256 new tokens, batch N (default N in {1, 8})
    gqa-fwd, gqa-gen-b8
            the forward and batch-8 generation cases on the same Decoder with grouped-query
            attention (attn_kv_heads=--kv-heads, default 2 key/value heads for 6 query heads)
    llama-train, llama-fwd, llama-gen-bN
            the train, forward and generation cases on a Llama-style Decoder: full rotary
            positions, RMSNorm, SwiGLU without biases, grouped-query attention (both libraries
            from the same keywords; x-transformers gets anyformer's weights for the output check)

Run ``python benchmarks/bench_core.py --help`` and see benchmarks/README.md.
x-transformers is a benchmark-only dependency: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

ANY = "anyformer"
XT = "x-transformers"
ALL_IMPLS = (ANY, XT)


# --------------------------------------------------------------------------------------
# implementations


@dataclass
class Impl:
    name: str
    version: str
    TransformerWrapper: Any
    Decoder: Any
    AutoregressiveWrapper: Any


def load_impl(name: str) -> Impl:
    if name == ANY:
        mod = importlib.import_module("anyformer")
        version = getattr(mod, "__version__", "?")
    else:
        mod = importlib.import_module("x_transformers")
        version = importlib.metadata.version("x-transformers")
    return Impl(
        name=name,
        version=version,
        TransformerWrapper=mod.TransformerWrapper,
        Decoder=mod.Decoder,
        AutoregressiveWrapper=mod.AutoregressiveWrapper,
    )


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        num_tokens=args.num_tokens,
        max_seq_len=args.max_seq_len,
        decoder=dict(dim=args.dim, depth=args.depth, heads=args.heads, attn_flash=args.flash),
    )


def build(impl: Impl, args: argparse.Namespace, device: torch.device, extra: dict | None = None):
    """Build an AutoregressiveWrapper(TransformerWrapper(Decoder)) with a fixed seed;
    ``extra``: more Decoder keywords (a case's variant, e.g. grouped-query attention)."""
    kw = model_kwargs(args)
    torch.manual_seed(args.seed)  # identical seed -> identical init if both init alike
    net = impl.TransformerWrapper(
        num_tokens=kw["num_tokens"],
        max_seq_len=kw["max_seq_len"],
        attn_layers=impl.Decoder(**kw["decoder"], **(extra or {})),
    )
    wrapper = impl.AutoregressiveWrapper(net)
    return wrapper.to(device)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------
# timing helpers


def make_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def autocast_ctx(args: argparse.Namespace, device: torch.device):
    if args.dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed_ms(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class CpuMeter:
    """How many CPU cores *other* processes kept busy while we were timing (Linux only).

    busy time of the whole machine (from /proc/stat) minus this process's own CPU time,
    divided by wall time. Anything well above 0 means the numbers are contaminated by
    other load; with all cores in use by torch, even a little foreign load can stall
    OpenMP barriers and inflate small-op-heavy cases (generation) by large factors.
    """

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start()

    @staticmethod
    def _busy_jiffies() -> int | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal

    def start(self) -> None:
        self.t0, self.own0, self.busy0 = (
            time.perf_counter(),
            time.process_time(),
            self._busy_jiffies(),
        )

    def other_cores(self) -> float | None:
        busy = self._busy_jiffies()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        own = time.process_time() - self.own0
        return max(0.0, ((busy - self.busy0) / self.hz - own) / max(wall, 1e-9))


# --------------------------------------------------------------------------------------
# cases: each returns a zero-argument callable that performs one timed unit of work


def case_train(wrapper, args, device):
    batch, seq = args.train_batch, args.train_seq
    g = torch.Generator().manual_seed(args.seed + 1)
    # AutoregressiveWrapper shifts internally: (b, n + 1) tokens -> n inputs, n targets
    tokens = torch.randint(0, args.num_tokens, (batch, seq + 1), generator=g).to(device)
    opt = torch.optim.AdamW(wrapper.parameters(), lr=1e-4)
    wrapper.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast_ctx(args, device):
            loss = wrapper(tokens)
        loss.backward()
        opt.step()

    return step


def case_fwd(wrapper, args, device):
    batch, seq = args.fwd_batch, args.fwd_seq
    g = torch.Generator().manual_seed(args.seed + 2)
    tokens = torch.randint(0, args.num_tokens, (batch, seq), generator=g).to(device)
    net = wrapper.net
    net.eval()

    def step():
        with torch.inference_mode(), autocast_ctx(args, device):
            net(tokens)

    return step


def make_case_gen(batch: int):
    def case_gen(wrapper, args, device):
        g = torch.Generator().manual_seed(args.seed + 3)
        prompts = torch.randint(0, args.num_tokens, (batch, args.prompt_len), generator=g)
        prompts = prompts.to(device)

        def step():
            with autocast_ctx(args, device):
                out = wrapper.generate(prompts, args.gen_len, temperature=0.0, cache_kv=True)
            assert out.shape == (batch, args.gen_len), tuple(out.shape)

        return step

    return case_gen


@dataclass
class Case:
    name: str
    desc: str
    setup: Callable[..., Callable[[], None]]
    tokens: int  # tokens processed per call, for throughput
    decoder_extra: dict | None = None  # a variant of the model, built for this case only


def llama_keywords(args) -> dict[str, Any]:
    """The Llama-style Decoder keywords (on top of the default ones): full rotary positions,
    RMSNorm, SwiGLU feedforward without biases, grouped-query attention. (x-transformers 1.28.2
    keeps one bias in its GLU with ff_no_bias=True: a few hundred parameters more.)"""
    return dict(
        rotary_pos_emb=True,
        rotary_emb_dim=args.dim // args.heads,
        use_rmsnorm=True,
        ff_glu=True,
        ff_swish=True,
        ff_no_bias=True,
        attn_kv_heads=args.kv_heads,
    )


def make_cases(args) -> list[Case]:
    cases = [
        Case(
            "train",
            f"train step (fwd+bwd+AdamW) b={args.train_batch} n={args.train_seq}",
            case_train,
            args.train_batch * args.train_seq,
        ),
        Case(
            "fwd",
            f"forward inference_mode b={args.fwd_batch} n={args.fwd_seq}",
            case_fwd,
            args.fwd_batch * args.fwd_seq,
        ),
    ]
    for b in args.gen_batches:
        cases.append(
            Case(
                f"gen-b{b}",
                f"greedy cached generate b={b} prompt={args.prompt_len} new={args.gen_len}",
                make_case_gen(b),
                b * args.gen_len,
            )
        )
    gqa = {"attn_kv_heads": args.kv_heads}
    cases += [
        Case(
            "gqa-fwd",
            f"forward, kv_heads={args.kv_heads} b={args.fwd_batch} n={args.fwd_seq}",
            case_fwd,
            args.fwd_batch * args.fwd_seq,
            gqa,
        ),
        Case(
            "gqa-gen-b8",
            f"cached generate, kv_heads={args.kv_heads} b=8 new={args.gen_len}",
            make_case_gen(8),
            8 * args.gen_len,
            gqa,
        ),
    ]
    llama = llama_keywords(args)
    cases += [
        Case(
            "llama-train",
            f"Llama-style train step b={args.train_batch} n={args.train_seq}",
            case_train,
            args.train_batch * args.train_seq,
            llama,
        ),
        Case(
            "llama-fwd",
            f"Llama-style forward b={args.fwd_batch} n={args.fwd_seq}",
            case_fwd,
            args.fwd_batch * args.fwd_seq,
            llama,
        ),
    ]
    for b in args.gen_batches:
        cases.append(
            Case(
                f"llama-gen-b{b}",
                f"Llama-style cached generate b={b} prompt={args.prompt_len} new={args.gen_len}",
                make_case_gen(b),
                b * args.gen_len,
                llama,
            )
        )
    wanted = set(args.cases) if args.cases else None
    if wanted is not None:
        unknown = wanted - {c.name for c in cases}
        if unknown:
            raise SystemExit(f"unknown case(s) {sorted(unknown)}; have {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in wanted]
    return cases


# --------------------------------------------------------------------------------------
# equivalence check (informational)


@torch.no_grad()
def copy_weights_ordered(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Copy src's parameters into dst, walking both in registration order.

    A dst tensor either matches the next src tensor's shape or is the row-wise
    concatenation of the next few src tensors (e.g. a fused to_qkv weight built from
    to_q, to_k, to_v). Raises ValueError when the layouts cannot be aligned this way.
    """
    src_ps = list(src.parameters())
    i = 0
    for p in dst.parameters():
        if i < len(src_ps) and src_ps[i].shape == p.shape:
            p.copy_(src_ps[i])
            i += 1
            continue
        parts, rows, j = [], 0, i
        while (
            j < len(src_ps)
            and rows < p.shape[0]
            and p.ndim == src_ps[j].ndim
            and src_ps[j].shape[1:] == p.shape[1:]
        ):
            parts.append(src_ps[j])
            rows += src_ps[j].shape[0]
            j += 1
        if len(parts) < 2 or rows != p.shape[0]:
            raise ValueError(f"cannot align parameter of shape {tuple(p.shape)} at src index {i}")
        p.copy_(torch.cat(parts, dim=0))
        i = j
    if i != len(src_ps):
        raise ValueError(f"{len(src_ps) - i} source parameters left over")


def check_equivalence(models: dict[str, Any], args, device) -> dict[str, Any]:
    """Compare the two freshly built models: identical init? same outputs?"""
    info: dict[str, Any] = {}
    if len(models) != 2:
        return info
    a, x = models[ANY], models[XT]
    pa, px = list(a.parameters()), list(x.parameters())
    identical = [p.shape for p in pa] == [p.shape for p in px] and all(
        torch.equal(p, q) for p, q in zip(pa, px)
    )
    info["identical_init_from_seed"] = identical
    if not identical and args.copy_weights:
        # timings do not depend on weight values; this only makes the output check meaningful
        try:
            copy_weights_ordered(a, x)
            identical = True
            info["weights"] = "copied x-transformers -> anyformer (ordered, fused qkv aware)"
        except ValueError as e:
            info["weights"] = f"not copied ({e})"
    if not identical:
        info["outputs"] = "not compared (weights differ)"
        return info

    info.update(compare_outputs(a, x, args, device))
    return info


def check_variant(models: dict[str, Any], args, device) -> dict[str, Any]:
    """A case's model variant (e.g. Llama-style): x-transformers gets anyformer's weights through
    anyformer.convert (exact, including head orders and fused projections), then the outputs
    are compared as for the default model."""
    from anyformer.convert import to_x_transformers_state_dict

    a, x = models[ANY], models[XT]
    with torch.no_grad():
        x.net.load_state_dict(to_x_transformers_state_dict(a.net))
    return compare_outputs(a, x, args, device)


def compare_outputs(a, x, args, device) -> dict[str, Any]:
    """Largest forward-logit difference and greedy-token agreement of two AutoregressiveWrappers."""
    models = {ANY: a, XT: x}
    info: dict[str, Any] = {}
    g = torch.Generator().manual_seed(args.seed + 4)
    toks = torch.randint(0, args.num_tokens, (2, 64), generator=g).to(device)
    was = {k: m.training for k, m in models.items()}
    for m in models.values():
        m.eval()
    with torch.inference_mode():
        la, lx = a.net(toks).float(), x.net(toks).float()
        info["fwd_logits_max_abs_diff"] = float(f"{(la - lx).abs().max().item():.3g}")
        ga = a.generate(toks[:1, :16], 32, temperature=0.0, cache_kv=True)
        gx = x.generate(toks[:1, :16], 32, temperature=0.0, cache_kv=True)
        info["greedy_tokens_agree"] = f"{(ga == gx).sum().item()}/{gx.numel()}"
    for k, m in models.items():
        m.train(was[k])
    return info


# --------------------------------------------------------------------------------------
# main


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="anyformer vs x-transformers 1.28.2 on the default Decoder config",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="auto = cuda if available else cpu")  # fmt: skip
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16 = fp32 weights under torch.autocast(bfloat16)")  # fmt: skip
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions per case and implementation (default 20, --quick 5)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warmup calls per case and implementation (default 3, --quick 1)")  # fmt: skip
    p.add_argument("--flash", action=argparse.BooleanOptionalAction, default=True,
                   help="attn_flash=True on both (F.scaled_dot_product_attention)")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="smoke run: fewer repetitions and only gen batch 1")  # fmt: skip
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch.set_num_threads (default: all usable cores)")  # fmt: skip
    p.add_argument("--json", metavar="PATH", default=None, help="write results as JSON")
    p.add_argument("--impls", nargs="+", default=list(ALL_IMPLS), choices=list(ALL_IMPLS),
                   help="implementations to run (the ratio needs both)")  # fmt: skip
    p.add_argument("--cases", nargs="+", default=None,
                   help="subset of cases to run: train fwd gen-b1 gen-b8 gqa-fwd gqa-gen-b8 "
                        "llama-train llama-fwd llama-gen-b1 llama-gen-b8")  # fmt: skip
    p.add_argument("--gen-batches", type=int, nargs="+", default=None,
                   help="batch sizes for the generation case (default 1 8, --quick 1)")  # fmt: skip
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="report whether both models start from identical weights / outputs")  # fmt: skip
    p.add_argument("--copy-weights", action=argparse.BooleanOptionalAction, default=True,
                   help="if seeding alone does not give identical weights, copy x-transformers' "
                        "weights into anyformer (ordered, fused-qkv aware) before checking")  # fmt: skip
    p.add_argument("--case-budget-s", type=float, default=None,
                   help="stop a case's timed repetitions once it has run this long "
                        "(default 120, --quick 30; 0 = no limit)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    # model / workload shape (defaults = x-transformers' README Decoder, spec of this bench)
    p.add_argument("--num-tokens", type=int, default=256)
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, default=2,
                   help="key/value heads of the gqa-* cases (divides --heads)")  # fmt: skip
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-seq", type=int, default=256)
    p.add_argument("--fwd-batch", type=int, default=8)
    p.add_argument("--fwd-seq", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--gen-len", type=int, default=256)
    args = p.parse_args(argv)

    if args.reps is None:
        args.reps = 5 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    if args.case_budget_s is None:
        args.case_budget_s = 30.0 if args.quick else 120.0
    if args.gen_batches is None:
        args.gen_batches = [1] if args.quick else [1, 8]
    if args.reps < 1 or args.warmup < 0:
        p.error("--reps must be >= 1 and --warmup >= 0")
    if max(args.train_seq, args.fwd_seq, args.prompt_len + args.gen_len) > args.max_seq_len:
        p.error("--max-seq-len must cover the longest sequence (absolute positional embedding)")
    return args


def env_info(args, device, impls: dict[str, Impl]) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "usable_cores": default_threads(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": args.dtype,
        "flash": args.flash,
        "versions": {k: v.version for k, v in impls.items()},
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def fmt_cell(res: dict[str, Any], name: str, requested: list[str]) -> str:
    if name not in requested:
        return "-"
    r = res.get(name)
    return "error" if r is None else f"{r['median_ms']:.1f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    # x-transformers 1.28.2 uses APIs newer torch deprecates; keep the output readable
    warnings.filterwarnings("ignore", message=r".*torch\.backends\.cuda\.sdp_kernel.*")
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast.*")
    torch.set_num_threads(args.threads)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    if args.dtype == "bfloat16" and device.type != "cuda":
        print("note: bfloat16 autocast on CPU is supported but is not the intended configuration")

    errors: list[dict[str, str]] = []

    def record_error(impl: str, where: str) -> None:
        tb = traceback.format_exc()
        errors.append({"impl": impl, "where": where, "traceback": tb})
        print(f"\n!!! {impl} failed in {where}:\n{tb}", file=sys.stderr, flush=True)

    impls: dict[str, Impl] = {}
    for name in args.impls:
        try:
            impls[name] = load_impl(name)
        except Exception:
            record_error(name, "import")

    models: dict[str, Any] = {}
    for name, impl in impls.items():
        try:
            models[name] = build(impl, args, device)
        except Exception:
            record_error(name, "build")

    info = env_info(args, device, impls)
    kw = model_kwargs(args)
    print("anyformer vs x-transformers benchmark")
    print(
        f"  torch {info['torch']} | device {info['device']}"
        + (f" ({info['gpu']})" if "gpu" in info else f" ({info['cpu']})")
        + f" | threads {info['torch_threads']}/{info['usable_cores']} cores"
        f" | dtype {args.dtype} | flash {args.flash}"
    )
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(
        f"  model: TransformerWrapper(num_tokens={kw['num_tokens']}, max_seq_len={kw['max_seq_len']},"
        f" attn_layers=Decoder({', '.join(f'{k}={v}' for k, v in kw['decoder'].items())}))"
    )
    params = {name: num_params(m) for name, m in models.items()}
    print("  parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    if len(params) == 2 and len(set(params.values())) != 1:
        print("  WARNING: parameter counts differ -- the models are not the same architecture")
    print(f"  reps {args.reps} (median reported), warmup {args.warmup}, seed {args.seed}")

    checks: dict[str, Any] = {}
    if args.check and len(models) == 2:
        try:
            checks = check_equivalence(models, args, device)
        except Exception:
            record_error(ANY, "equivalence check")
        if checks:
            print("  check: " + ", ".join(f"{k}={v}" for k, v in checks.items()))

    idle_meter = CpuMeter()
    time.sleep(1.0)
    other_before = idle_meter.other_cores()
    if other_before is not None:
        print(f"  other processes keep {other_before:.2f} cores busy before start")
    print(flush=True)

    cases = make_cases(args)
    sync = make_sync(device)
    results: dict[str, Any] = {}
    t_start = time.perf_counter()
    meter_all = CpuMeter()

    for case in cases:
        t_case = time.perf_counter()
        meter = CpuMeter()
        steps: dict[str, Callable[[], None]] = {}
        case_models = models
        if case.decoder_extra is not None:
            case_models = {}
            for name, impl in impls.items():
                try:
                    case_models[name] = build(impl, args, device, case.decoder_extra)
                except Exception:
                    record_error(name, f"build for case {case.name}")
            key = repr(sorted(case.decoder_extra.items()))
            if args.check and len(case_models) == 2 and key not in checks:
                try:
                    checks[key] = check_variant(case_models, args, device)
                    found = ", ".join(f"{k}={v}" for k, v in checks[key].items())
                    print(f"  check {case.name}: {found}", flush=True)
                except Exception:
                    record_error(ANY, f"equivalence check for case {case.name}")
        for name, model in case_models.items():
            try:
                step = case.setup(model, args, device)
                t_warm = time.perf_counter()
                for _ in range(args.warmup):
                    step()
                    # a contended machine can make one call take minutes: cap warmup too
                    if args.case_budget_s and time.perf_counter() - t_warm > args.case_budget_s / 4:
                        break
                sync()
                steps[name] = step
            except Exception:
                record_error(name, f"case {case.name} (setup/warmup)")
        times: dict[str, list[float]] = {name: [] for name in steps}
        order = [n for n in ALL_IMPLS if n in steps]
        budget_hit = False
        for rep in range(args.reps):
            # alternate which implementation goes first in each repetition
            for name in order if rep % 2 == 0 else order[::-1]:
                if name not in times:
                    continue
                try:
                    times[name].append(timed_ms(steps[name], sync))
                except Exception:
                    record_error(name, f"case {case.name} (rep {rep})")
                    del times[name]
            if args.case_budget_s and time.perf_counter() - t_case > args.case_budget_s:
                budget_hit = rep + 1 < args.reps
                break
        del steps
        other = meter.other_cores()

        res: dict[str, Any] = {
            "desc": case.desc,
            "tokens_per_call": case.tokens,
            "reps_done": max((len(t) for t in times.values()), default=0),
            "budget_hit": budget_hit,
            "other_busy_cores": other,
            "case_wall_s": time.perf_counter() - t_case,
        }
        for name in args.impls:
            ts = times.get(name)
            if not ts:
                res[name] = None
                continue
            med = statistics.median(ts)
            res[name] = {
                "median_ms": med,
                "min_ms": min(ts),
                "iqr_ms": quantile(ts, 0.75) - quantile(ts, 0.25),
                "tokens_per_s": case.tokens / (med / 1e3),
                "times_ms": ts,
            }
        a, x = res.get(ANY), res.get(XT)
        res["ratio_xt_over_any"] = x["median_ms"] / a["median_ms"] if a and x else None
        results[case.name] = res
        print(
            f"  [{case.name}] {res['reps_done']} reps in {res['case_wall_s']:.1f}s"
            + (" (case budget hit)" if budget_hit else "")
            + (f", other load {other:.2f} cores" if other is not None else "")
            + ": "
            + ", ".join(
                f"{n} {res[n]['median_ms']:.1f} ms" if res.get(n) else f"{n} error"
                for n in args.impls
            ),
            flush=True,
        )

    total_s = time.perf_counter() - t_start

    other_all = meter_all.other_cores()

    # table
    print()
    header = (
        f"{'case':<8} {'anyformer ms':>12} {'x-transf. ms':>12} {'ratio xt/any':>12}"
        f" {'IQR% any/xt':>12} {'reps':>4}  description"
    )
    print(header)
    print("-" * len(header))
    for case in cases:
        res = results[case.name]
        a, x = res.get(ANY), res.get(XT)
        ratio = res["ratio_xt_over_any"]
        iqr = "/".join(f"{100 * r['iqr_ms'] / r['median_ms']:.0f}" if r else "-" for r in (a, x))
        print(
            f"{case.name:<8} {fmt_cell(res, ANY, args.impls):>12}"
            f" {fmt_cell(res, XT, args.impls):>12}"
            f" {(f'{ratio:.3f}' if ratio else '-'):>12} {iqr:>12} {res['reps_done']:>4}"
            f"  {res['desc']}"
        )
    print()
    print("ratio = x-transformers median / anyformer median: > 1 means anyformer is faster.")
    print(
        f"torch {info['torch']}, {info['torch_threads']} threads, device {info['device']}, "
        f"dtype {args.dtype}, flash {args.flash}; timed section took {total_s:.0f}s"
    )
    if other_all is not None:
        print(
            f"other processes kept {other_all:.2f} of {info['usable_cores']} cores busy meanwhile"
        )
        if other_all > 0.1 * info["usable_cores"]:
            print(
                "WARNING: the machine was not idle; medians (generation especially) are "
                "unreliable. Rerun on an idle machine or with fewer --threads."
            )
    if errors:
        print(f"\n{len(errors)} error(s); tracebacks above (stderr) and in --json output.")

    if args.json:
        out = {
            "env": info,
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "model_kwargs": kw,
            "params": params,
            "checks": checks,
            "results": results,
            "errors": errors,
            "timed_section_s": total_s,
            "other_busy_cores": other_all,
            "other_busy_cores_before_start": other_before,
        }
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")

    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
