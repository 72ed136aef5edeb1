"""CUDA checks: what the CPU test suite cannot see (run on a machine with a GPU).

For a table of configurations it checks, on CUDA:

- fused (SDPA) and explicit attention agree under float16 and bfloat16 autocast, and in float32;
- cached greedy decoding equals uncached decoding (float32, batch 2, prompts of different lengths);
- a training step under bfloat16 autocast gives a finite loss and finite gradients.

It prints one line per check and exits non-zero if any fails. It needs no x-transformers.
``--dry-run`` runs the same checks on the CPU with tiny shapes (a few seconds; float16 and
bfloat16 autocast run on the CPU too), and skips the speed lines.

    python benchmarks/cuda_check.py              # on a GPU
    python benchmarks/cuda_check.py --dry-run    # anywhere
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from anyformer import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "llama": dict(
        rotary_pos_emb=True,
        use_rmsnorm=True,
        ff_glu=True,
        ff_swish=True,
        ff_no_bias=True,
        attn_kv_heads=2,
    ),
    "alibi": dict(alibi_pos_bias=True),
    "t5-bias": dict(rel_pos_bias=True),
    "qk-norm-gates": dict(attn_qk_norm=True, attn_gate_values=True, attn_num_mem_kv=2),
    "xpos-partial": dict(rotary_pos_emb=True, rotary_xpos=True, rotary_emb_dim=16),
}


@dataclass(frozen=True)
class Sizes:
    """The shapes the checks run at."""

    dim: int = 256
    depth: int = 4
    heads: int = 8
    vocab: int = 512
    seq: int = 200
    new_tokens: int = 48


FULL, TINY = Sizes(), Sizes(dim=64, depth=2, heads=4, vocab=64, seq=24, new_tokens=12)
FAILED: list[str] = []
RESULTS: list[tuple[str, bool, str]] = []  # (check, passed, detail) of the last run
DEVICE = "cuda"
SIZES = FULL


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    RESULTS.append((name, ok, detail))
    if not ok:
        FAILED.append(name)


def build(options: dict[str, Any], flash: bool, causal: bool = True) -> TransformerWrapper:
    torch.manual_seed(0)
    stack = Decoder if causal else Encoder
    return TransformerWrapper(
        num_tokens=SIZES.vocab,
        max_seq_len=256,
        use_abs_pos_emb=not any(k.startswith(("rotary", "alibi", "rel_pos")) for k in options),
        attn_layers=stack(
            dim=SIZES.dim,
            depth=SIZES.depth,
            heads=SIZES.heads,
            attn_dim_head=SIZES.dim // SIZES.heads,
            attn_kernel="auto" if flash else "explicit",
            **options,
        ),
    )


def check_paths(name: str, options: dict[str, Any]) -> None:
    fused = build(options, flash=True).to(DEVICE).eval()
    explicit = build(options, flash=False).to(DEVICE).eval()
    explicit.load_state_dict(fused.state_dict())
    n = SIZES.seq
    x = torch.randint(0, SIZES.vocab, (4, n), device=DEVICE)
    mask = torch.ones(4, n, dtype=torch.bool, device=DEVICE)
    mask[1, 3 * n // 4 :] = False
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)):
        autocast = torch.autocast(DEVICE.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)
        with torch.no_grad(), autocast:
            a = fused(x, mask=mask).float()
            b = explicit(x, mask=mask).float()
        diff = (a - b)[mask].abs().max().item()
        scale = b[mask].abs().max().item()
        ok = bool(torch.isfinite(a).all()) and diff <= tol * max(1.0, scale)
        report(f"{name}/fused-vs-explicit/{str(dtype)[6:]}", ok, f"max abs diff {diff:.2e}")


def check_cache(name: str, options: dict[str, Any]) -> None:
    model = build(options, flash=True).to(DEVICE).eval()
    lm = AutoregressiveWrapper(model)
    prompts = [torch.randint(1, SIZES.vocab, (n,), device=DEVICE) for n in (5, 17)]
    new = SIZES.new_tokens
    cached = lm.generate(prompts, new, temperature=0.0, cache_kv=True)
    plain = lm.generate(prompts, new, temperature=0.0, cache_kv=False)
    assert isinstance(cached, torch.Tensor) and isinstance(plain, torch.Tensor)
    same = int((cached == plain).all(dim=1).sum())
    report(
        f"{name}/cached-equals-uncached", same == 2, f"{same}/2 rows identical over {new} tokens"
    )


def check_train(name: str, options: dict[str, Any]) -> None:
    model = build(options, flash=True).to(DEVICE).train()
    lm = AutoregressiveWrapper(model)
    x = torch.randint(0, SIZES.vocab, (8, SIZES.seq + 1), device=DEVICE)
    with torch.autocast(DEVICE.split(":")[0], dtype=torch.bfloat16):
        loss = lm(x)
    loss.backward()
    grads_ok = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    report(
        f"{name}/bf16-train-step",
        bool(torch.isfinite(loss)) and grads_ok,
        f"loss {loss.item():.3f}",
    )


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def speed(options: dict[str, Any]) -> None:
    """Cached greedy tokens/s on CUDA, float32 and bfloat16 (for the note, not a check)."""
    model = build(options, flash=True).to(DEVICE).eval()
    lm = AutoregressiveWrapper(model)
    prompt = torch.randint(1, SIZES.vocab, (8, 16), device=DEVICE)
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast(DEVICE.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            lm.generate(prompt, 16, temperature=0.0)
            sync()
            start = time.perf_counter()
            lm.generate(prompt, 200, temperature=0.0)
            sync()
        rate = 8 * 200 / (time.perf_counter() - start)
        print(f"info cached generation b=8: {rate:,.0f} tokens/s ({str(dtype)[6:]})", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("device", nargs="?", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, no speed lines")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device = "cpu"
    return args


def run(argv: list[str] | None = None) -> list[tuple[str, bool, str]]:
    """Run every check; -> (check, passed, detail) for each (also printed)."""
    global DEVICE, SIZES
    args = parse_args(argv)
    DEVICE, SIZES = args.device, TINY if args.dry_run else FULL
    FAILED.clear()
    RESULTS.clear()
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (--dry-run checks on the CPU)")
        return []
    where = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else DEVICE
    print(f"torch {torch.__version__} on {where}", flush=True)
    for name, options in CONFIGS.items():
        try:
            check_paths(name, options)
            check_cache(name, options)
            check_train(name, options)
        except Exception as error:  # report and go on: one line per failure
            report(f"{name}/error", False, f"{type(error).__name__}: {error}")
    if not args.dry_run:
        speed({})
        speed(CONFIGS["llama"])
    print(f"{len(FAILED)} failed" if FAILED else "all CUDA checks passed", flush=True)
    return list(RESULTS)


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
