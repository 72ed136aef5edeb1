"""CUDA checks: what the CPU test suite cannot see (run on a machine with a GPU).

For a table of configurations it checks, on CUDA:

- fused (SDPA) and explicit attention agree under float16 and bfloat16 autocast, and in float32;
- cached greedy decoding equals uncached decoding (float32, batch 2, prompts of different lengths);
- a training step under bfloat16 autocast gives a finite loss and finite gradients.

It prints one line per check and exits non-zero if any fails. It needs no x-transformers.

    python benchmarks/cuda_check.py
"""

from __future__ import annotations

import sys
import time
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

FAILED: list[str] = []
DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu" for a dry run of the script


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def build(options: dict[str, Any], flash: bool, causal: bool = True) -> TransformerWrapper:
    torch.manual_seed(0)
    stack = Decoder if causal else Encoder
    return TransformerWrapper(
        num_tokens=512,
        max_seq_len=256,
        use_abs_pos_emb=not any(k.startswith(("rotary", "alibi", "rel_pos")) for k in options),
        attn_layers=stack(
            dim=256, depth=4, heads=8, attn_kernel="auto" if flash else "explicit", **options
        ),
    )


def check_paths(name: str, options: dict[str, Any]) -> None:
    fused = build(options, flash=True).to(DEVICE).eval()
    explicit = build(options, flash=False).to(DEVICE).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randint(0, 512, (4, 200), device=DEVICE)
    mask = torch.ones(4, 200, dtype=torch.bool, device=DEVICE)
    mask[1, 150:] = False
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)):
        with torch.no_grad(), torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32):
            a = fused(x, mask=mask).float()
            b = explicit(x, mask=mask).float()
        diff = (a - b)[mask].abs().max().item()
        scale = b[mask].abs().max().item()
        ok = bool(torch.isfinite(a).all()) and diff <= tol * max(1.0, scale)
        report(f"{name}/fused-vs-explicit/{str(dtype)[6:]}", ok, f"max abs diff {diff:.2e}")


def check_cache(name: str, options: dict[str, Any]) -> None:
    model = build(options, flash=True).to(DEVICE).eval()
    lm = AutoregressiveWrapper(model)
    prompts = [torch.randint(1, 512, (n,), device=DEVICE) for n in (5, 17)]
    cached = lm.generate(prompts, 48, temperature=0.0, cache_kv=True)
    plain = lm.generate(prompts, 48, temperature=0.0, cache_kv=False)
    same = int((cached == plain).all(dim=1).sum())
    report(f"{name}/cached-equals-uncached", same == 2, f"{same}/2 rows identical over 48 tokens")


def check_train(name: str, options: dict[str, Any]) -> None:
    model = build(options, flash=True).to(DEVICE).train()
    lm = AutoregressiveWrapper(model)
    x = torch.randint(0, 512, (8, 257), device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
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
    prompt = torch.randint(1, 512, (8, 16), device=DEVICE)
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32):
            lm.generate(prompt, 16, temperature=0.0)
            sync()
            start = time.perf_counter()
            lm.generate(prompt, 200, temperature=0.0)
            sync()
        rate = 8 * 200 / (time.perf_counter() - start)
        print(f"info cached generation b=8: {rate:,.0f} tokens/s ({str(dtype)[6:]})", flush=True)


def main() -> int:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    where = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else DEVICE
    print(f"torch {torch.__version__} on {where}", flush=True)
    for name, options in CONFIGS.items():
        try:
            check_paths(name, options)
            check_cache(name, options)
            check_train(name, options)
        except Exception as error:  # report and go on: one line per failure
            report(f"{name}/error", False, f"{type(error).__name__}: {error}")
    speed({})
    speed(CONFIGS["llama"])
    print(f"{len(FAILED)} failed" if FAILED else "all CUDA checks passed", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
