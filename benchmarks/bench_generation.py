"""Benchmark generation: speculative decoding (speedup, acceptance) and beam search vs Hugging Face.

1. Two byte-level models are trained briefly on the built-in corpus (``anyformer.data``): a
   target and a much smaller draft. The script then times, on held-out prompts,

   * plain cached generation with the target (greedy, and sampled at ``--temperature``), and
   * speculative decoding with the draft proposing ``k`` tokens per round, for each ``--ks``,

   and reports tokens/s, the speedup over plain generation, and the acceptance rate (accepted
   draft tokens / proposed draft tokens). Greedy speculative output must equal plain greedy
   output token for token (checked, reported as ``same_tokens``).

2. Beam search (``--beams``, 4 by default) with the trained target against Hugging Face's
   ``GPT2LMHeadModel.generate(num_beams=4)`` holding the very same weights. The weights are
   copied by hand into a GPT-2 of the same shape (pre-LN, learned positions, exact GELU; the
   biases anyformer's default model does not have are zero in GPT-2). Logits are compared
   before timing, and both searches must return the same tokens.

Every timed case runs ``--reps`` times, interleaved with the cases it is compared with; the
medians are reported. Run ``python benchmarks/bench_generation.py --help``; a full CPU run takes
a few minutes (``--quick``: about one).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper
from anyformer.data import get_batch, load_splits

# --------------------------------------------------------------------------------------
# models and training


def build(dim: int, depth: int, heads: int, max_seq_len: int, device: torch.device):
    layers = Decoder(dim=dim, depth=depth, heads=heads, attn_dim_head=dim // heads, attn_flash=True)
    return TransformerWrapper(num_tokens=256, max_seq_len=max_seq_len, attn_layers=layers).to(
        device
    )


def train(model, data, steps: int, batch: int, seq: int, lr: float, device, seed: int) -> float:
    """AdamW with a short warmup and cosine decay; returns the mean loss of the last 20 steps."""
    wrapper = AutoregressiveWrapper(model).train()
    warmup = max(1, min(100, steps // 10))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = get_batch(data, batch, seq, generator=g).to(device)
        loss = wrapper(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return statistics.mean(losses[-20:])


@torch.no_grad()
def val_loss(model, data, batch: int, seq: int, device) -> float:
    x = get_batch(data, batch, seq, generator=torch.Generator().manual_seed(123)).to(device)
    return AutoregressiveWrapper(model).eval()(x).item()


# --------------------------------------------------------------------------------------
# timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(cases: dict[str, Callable[[], Any]], reps: int, warmup: int, device) -> dict:
    """Median seconds per case; in each repetition every case runs once, order rotating."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            cases[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {n: {"median_s": statistics.median(t), "times_s": t} for n, t in times.items()}


# --------------------------------------------------------------------------------------
# speculative decoding


def bench_speculative(target, draft, prompts, args, device) -> dict:
    lm = AutoregressiveWrapper(target)
    new = args.new_tokens
    out: dict[str, Any] = {}
    for mode, temperature in (("greedy", 0.0), ("sampled", args.temperature)):
        kw = dict(temperature=temperature, filter_logits_fn="top_p", filter_kwargs=dict(thres=0.95))
        stats: dict[str, Any] = {}
        outputs: dict[str, torch.Tensor] = {}

        def plain(kw=kw, outputs=outputs):
            outputs["plain"] = lm.generate(
                prompts, new, generator=torch.Generator(device=device).manual_seed(0), **kw
            )

        cases: dict[str, Callable[[], Any]] = {"plain": plain}
        for k in args.ks:

            def spec(k=k, kw=kw, outputs=outputs, stats=stats):
                tokens, inter = lm.generate(
                    prompts,
                    new,
                    draft_model=draft,
                    draft_tokens=k,
                    return_intermediates=True,
                    generator=torch.Generator(device=device).manual_seed(0),
                    **kw,
                )
                outputs[f"k={k}"] = tokens
                stats[f"k={k}"] = inter.speculative

            cases[f"k={k}"] = spec
        timing = interleaved(cases, args.reps, args.warmup, device)
        base = timing["plain"]["median_s"]
        rows = {}
        for name, t in timing.items():
            row = {
                "tokens_per_s": prompts.shape[0] * new / t["median_s"],
                "speedup": base / t["median_s"],
                "median_ms": 1000 * t["median_s"],
            }
            if name in stats:
                s = stats[name]
                row.update(
                    acceptance_rate=s.acceptance_rate,
                    tokens_per_target_call=new / s.target_calls,
                    rounds=s.rounds,
                )
                if mode == "greedy":
                    row["same_tokens"] = bool(torch.equal(outputs[name], outputs["plain"]))
            rows[name] = row
        out[mode] = rows
    return out


# --------------------------------------------------------------------------------------
# beam search against Hugging Face


@torch.no_grad()
def to_hf_gpt2(model: TransformerWrapper):
    """A GPT2LMHeadModel computing the same function as `model` (default anyformer Decoder)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    stack = model.attn_layers
    dim, heads = stack.dim, stack.heads
    config = GPT2Config(
        vocab_size=model.num_tokens,
        n_positions=model.max_seq_len,
        n_embd=dim,
        n_layer=stack.depth,
        n_head=heads,
        n_inner=None,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    hf = GPT2LMHeadModel(config).to(model.token_emb.emb.weight.device).eval()
    for p in hf.parameters():
        p.zero_()
    t = hf.transformer
    t.wte.weight.copy_(model.token_emb.emb.weight)
    t.wpe.weight.copy_(model.pos_emb.emb.weight * model.pos_emb.scale)
    blocks = list(stack.layers)
    for i, h in enumerate(t.h):
        attn, ff = blocks[2 * i], blocks[2 * i + 1]
        h.ln_1.weight.copy_(attn.pre_norm.weight)
        h.attn.c_attn.weight.copy_(attn.branch.qkv.to_qkv.weight.t())
        h.attn.c_proj.weight.copy_(attn.branch.to_out.weight.t())
        h.ln_2.weight.copy_(ff.pre_norm.weight)
        h.mlp.c_fc.weight.copy_(ff.branch.proj_in.weight.t())
        h.mlp.c_fc.bias.copy_(ff.branch.proj_in.bias)
        h.mlp.c_proj.weight.copy_(ff.branch.proj_out.weight.t())
        h.mlp.c_proj.bias.copy_(ff.branch.proj_out.bias)
    t.ln_f.weight.copy_(stack.final_norm.weight)
    hf.lm_head.weight.copy_(model.to_logits.weight)
    return hf


def bench_beam(model, prompts, args, device) -> dict:
    from transformers import GenerationConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = to_hf_gpt2(model)
    with torch.no_grad():
        diff = (hf(prompts).logits - model(prompts)).abs().max().item()
    new, beams = args.new_tokens, args.beams
    gen_config = GenerationConfig(
        num_beams=beams,
        do_sample=False,
        max_new_tokens=new,
        min_new_tokens=new,
        early_stopping=False,
        length_penalty=1.0,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    lm = AutoregressiveWrapper(model)
    outputs: dict[str, torch.Tensor] = {}

    def ours():
        outputs["anyformer"] = lm.beam_search(prompts, new, beams=beams)

    def theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = hf.generate(
                prompts, attention_mask=torch.ones_like(prompts), generation_config=gen_config
            )
        outputs["hf"] = out[:, prompts.shape[1] :]

    timing = interleaved({"anyformer": ours, "hf": theirs}, args.reps, args.warmup, device)
    res = {
        name: {
            "tokens_per_s": prompts.shape[0] * new / t["median_s"],
            "median_ms": 1000 * t["median_s"],
        }
        for name, t in timing.items()
    }
    res["logits_max_abs_diff"] = diff
    res["same_tokens"] = bool(torch.equal(outputs["anyformer"], outputs["hf"]))
    res["speedup_vs_hf"] = timing["hf"]["median_s"] / timing["anyformer"]["median_s"]
    return res


# --------------------------------------------------------------------------------------
# main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--quick", action="store_true", help="fewer train steps and repetitions")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-bytes", type=int, default=2_000_000, help="corpus size")
    p.add_argument(
        "--target", type=int, nargs=3, default=[256, 4, 4], metavar=("DIM", "DEPTH", "HEADS")
    )
    p.add_argument(
        "--draft", type=int, nargs=3, default=[64, 1, 2], metavar=("DIM", "DEPTH", "HEADS")
    )
    p.add_argument("--train-steps", type=int, default=300, help="target steps (draft: the same)")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-seq", type=int, default=128)
    p.add_argument("--lr", type=float, nargs=2, default=[1.5e-3, 2e-3], metavar=("TARGET", "DRAFT"))
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--batch", type=int, default=1, help="prompts per generate call")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 6], help="draft tokens per round")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", metavar="PATH", default=None)
    p.add_argument(
        "--cases", nargs="+", default=["speculative", "beam"], choices=["speculative", "beam"]
    )
    args = p.parse_args(argv)
    if args.quick:
        args.train_steps, args.reps, args.new_tokens = 120, 3, 64
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    torch.manual_seed(args.seed)
    train_data, val_data = load_splits(max_bytes=args.max_bytes)
    max_seq_len = max(args.train_seq, args.prompt_len + args.new_tokens)
    target = build(*args.target, max_seq_len, device)
    draft = build(*args.draft, max_seq_len, device)
    t0 = time.perf_counter()
    losses = {}
    torch.backends.cuda.matmul.allow_tf32 = True  # training only: generation runs in full fp32
    for name, model, lr in (("target", target, args.lr[0]), ("draft", draft, args.lr[1])):
        train_loss = train(
            model,
            train_data,
            args.train_steps,
            args.train_batch,
            args.train_seq,
            lr,
            device,
            args.seed,
        )
        losses[name] = {
            "train": train_loss,
            "val": val_loss(model, val_data, 32, args.train_seq, device),
            "params": sum(p.numel() for p in model.parameters()),
        }
        print(
            f"trained {name}: {losses[name]['params']:,} params, loss train {train_loss:.3f} / val {losses[name]['val']:.3f} (nats/byte)"
        )
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"training took {time.perf_counter() - t0:.0f}s")
    g = torch.Generator().manual_seed(args.seed + 1)
    prompts = get_batch(val_data, args.batch, args.prompt_len - 1, generator=g).to(device)
    report: dict[str, Any] = {
        "env": {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name()
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "args": vars(args),
        "models": losses,
    }
    if "speculative" in args.cases:
        spec = bench_speculative(target, draft, prompts, args, device)
        report["speculative"] = spec
        print(
            f"\nspeculative decoding, batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens"
        )
        print(
            f"{'mode':8} {'case':7} {'tokens/s':>9} {'speedup':>8} {'accept':>7} {'tok/call':>9} {'same':>5}"
        )
        for mode, rows in spec.items():
            for name, r in rows.items():
                acc = f"{r['acceptance_rate']:.2f}" if "acceptance_rate" in r else "-"
                per = (
                    f"{r['tokens_per_target_call']:.2f}"
                    if "tokens_per_target_call" in r
                    else "1.00"
                )
                same = str(r.get("same_tokens", "-"))
                print(
                    f"{mode:8} {name:7} {r['tokens_per_s']:9.1f} {r['speedup']:8.2f} {acc:>7} {per:>9} {same:>5}"
                )
    if "beam" in args.cases:
        beam = bench_beam(target, prompts, args, device)
        report["beam"] = beam
        print(
            f"\nbeam search, {args.beams} beams, batch {args.batch}, {args.new_tokens} new tokens"
        )
        print(
            f"  anyformer {beam['anyformer']['tokens_per_s']:.1f} tokens/s, Hugging Face {beam['hf']['tokens_per_s']:.1f} tokens/s, ratio {beam['speedup_vs_hf']:.2f}"
        )
        print(
            f"  logits max abs diff {beam['logits_max_abs_diff']:.2e}, same tokens: {beam['same_tokens']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
