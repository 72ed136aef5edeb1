"""Quick start: train a tiny byte-level decoder on the built-in corpus.

Run it with ``python -m anyformer.cli.quickstart`` (or ``bash scripts/main.sh``). It

1. builds the built-in byte-level corpus (:mod:`anyformer.data.corpus`),
2. measures the validation loss in bits per byte on a fixed set of validation batches,
3. trains a small decoder-only transformer with AdamW (linear warmup, cosine decay),
4. measures the validation bits per byte again (and a few times in between), and
5. prints a sample generated from a prompt taken from the validation split.

``main`` returns the measured numbers so that tests can assert on them; ``cli`` is the
console-script entry point (``anyformer-quickstart``), which returns nothing so the exit
status is 0.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from anyformer.data.corpus import VOCAB_SIZE, decode, get_batch, load_splits

__all__ = ["build_model", "build_parser", "evaluate_bpb", "main"]

LN2 = math.log(2.0)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the quick-start command."""
    p = argparse.ArgumentParser(
        prog="python -m anyformer.cli.quickstart",
        description=(
            "Train a tiny byte-level decoder on the built-in corpus (Python's own docs and "
            "standard-library sources), report validation bits per byte before and after "
            "training, and print a sample."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--steps", type=int, default=300, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=128, help="training context length")
    p.add_argument("--dim", type=int, default=128, help="model width")
    p.add_argument("--depth", type=int, default=3, help="number of decoder layers")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument(
        "--warmup", type=int, default=None, help="warmup steps (default: 10%% of --steps)"
    )
    p.add_argument(
        "--eval-batches", type=int, default=8, help="fixed validation batches per evaluation"
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="evaluate every N steps (default: 4 evaluations spread over training)",
    )
    p.add_argument("--sample-len", type=int, default=200, help="bytes to generate")
    p.add_argument("--prompt-len", type=int, default=64, help="bytes of validation prompt")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="sampling temperature (top-k filtered); 0 means greedy",
    )
    p.add_argument("--max-bytes", type=int, default=4_000_000, help="corpus size cap")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--quiet", action="store_true", help="only print the summary lines")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject argument values that cannot work, through ``p.error`` (exit status 2)."""
    positive = ["batch_size", "seq_len", "dim", "depth", "heads", "eval_batches", "max_bytes"]
    for name in positive:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ["steps", "sample_len", "prompt_len"]:
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.dim % args.heads:
        p.error(f"--dim ({args.dim}) must be divisible by --heads ({args.heads})")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.eval_every is not None and args.eval_every < 1:
        p.error(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if not args.temperature >= 0:
        p.error(f"--temperature must be >= 0, got {args.temperature}")


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """Return an ``AutoregressiveWrapper`` around a byte-level decoder built from ``args``."""
    from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper

    net = TransformerWrapper(
        num_tokens=VOCAB_SIZE,
        max_seq_len=args.seq_len,
        attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=args.heads),
    )
    return AutoregressiveWrapper(net)


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, batches: Sequence[torch.Tensor]) -> float:
    """Return the mean validation loss over ``batches`` in bits per byte."""
    was_training = model.training
    model.eval()
    total = 0.0
    for batch in batches:
        total += float(model(batch))
    model.train(was_training)
    return total / len(batches) / LN2


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup to ``peak`` then cosine decay to 10% of ``peak``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _prompt_from(val: torch.Tensor, length: int) -> torch.Tensor:
    """Return ``length`` bytes of ``val`` starting at its first line start (long tensor)."""
    head = val[:4096]
    newlines = (head == ord("\n")).nonzero()
    start = int(newlines[0]) + 1 if len(newlines) else 0
    start = min(start, max(0, len(val) - length))
    return val[start : start + length].long()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and sample; print a report and return the measured numbers."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, flush=True)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t_start = time.perf_counter()
    train, val = load_splits(max_bytes=args.max_bytes)
    if args.seq_len + 1 > len(val):
        parser.error(f"--seq-len ({args.seq_len}) is too long for the validation split")
    log(
        f"corpus: {len(train) + len(val):,} bytes (train {len(train):,}, val {len(val):,}); "
        f"torch threads: {torch.get_num_threads()}"
    )

    train_gen = torch.Generator().manual_seed(args.seed)
    val_gen = torch.Generator().manual_seed(args.seed + 1)
    val_batches = [
        get_batch(val, args.batch_size, args.seq_len, val_gen) for _ in range(args.eval_batches)
    ]

    model = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"model: dim={args.dim} depth={args.depth} heads={args.heads} "
        f"seq_len={args.seq_len}, {n_params:,} parameters"
    )

    # No weight decay on biases and norm gains (1-D parameters).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 10)
    eval_every = args.eval_every or max(1, math.ceil(args.steps / 4))

    history: list[tuple[int, float]] = []
    bpb = evaluate_bpb(model, val_batches)
    history.append((0, bpb))
    log(f"step {0:>5}/{args.steps} | val bpb {bpb:.3f}")

    model.train()
    t_train = time.perf_counter()
    train_loss = float("nan")
    for step in range(args.steps):
        lr = _lr_at(step, args.steps, warmup, args.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = get_batch(train, args.batch_size, args.seq_len, train_gen)
        loss = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        train_loss = loss.item()
        done = step + 1
        if done % eval_every == 0 or done == args.steps:
            bpb = evaluate_bpb(model, val_batches)
            history.append((done, bpb))
            elapsed = time.perf_counter() - t_train
            log(
                f"step {done:>5}/{args.steps} | train bpb {train_loss / LN2:.3f} | "
                f"val bpb {bpb:.3f} | lr {lr:.2e} | {elapsed:.1f}s"
            )
    train_seconds = time.perf_counter() - t_train

    first_bpb, last_bpb = history[0][1], history[-1][1]
    print(f"val bpb: {first_bpb:.2f} -> {last_bpb:.2f} (drop {first_bpb - last_bpb:.2f})")

    # Sample from a prompt taken from the validation split: the first whole lines of it.
    model.eval()
    prompt = _prompt_from(val, min(args.prompt_len, args.seq_len))
    sample_tokens: list[int] = []
    if args.sample_len > 0:
        torch.manual_seed(args.seed)
        # The model uses absolute positions, so a KV cache only helps while prompt + sample
        # fits in one context window; past that, generate() slides the window uncached.
        fits = len(prompt) + args.sample_len <= args.seq_len
        with torch.no_grad():
            out = model.generate(
                prompt[None], args.sample_len, temperature=args.temperature, cache_kv=fits
            )
        sample_tokens = out[0].tolist()
    sample = decode(sample_tokens)
    print(f"--- prompt ({len(prompt)} bytes from the validation split) ---")
    print(decode(prompt))
    print(f"--- sample ({args.sample_len} bytes, temperature {args.temperature}) ---")
    print(sample)
    print("---")
    total_seconds = time.perf_counter() - t_start
    print(f"time: {train_seconds:.1f}s training, {total_seconds:.1f}s total")

    return {
        "first_bpb": first_bpb,
        "last_bpb": last_bpb,
        "drop_bpb": first_bpb - last_bpb,
        "history": history,
        "final_train_bpb": train_loss / LN2,
        "sample": sample,
        "sample_tokens": sample_tokens,
        "prompt": decode(prompt),
        "num_params": n_params,
        "train_seconds": train_seconds,
        "total_seconds": total_seconds,
    }


def cli() -> None:
    """Console-script entry point: run :func:`main` and exit 0 (``main`` returns a dict)."""
    main()


if __name__ == "__main__":
    cli()
