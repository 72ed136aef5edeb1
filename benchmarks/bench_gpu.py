"""GPU benchmarks: bf16 training throughput and MFU, and cached generation against peers.

1. **Training** (``--train``): one optimizer step = bf16-autocast forward + backward of the
   next-token loss + fused AdamW, for a GPT-2-124M-shaped model (LayerNorm, GELU, learned
   positions, tied embeddings, vocabulary 50304) and a Llama-style one of similar size (RMSNorm,
   rotary, SwiGLU, grouped-query attention), optionally under ``torch.compile``. Reported:
   tokens/s, model FLOPs utilisation (``6 N + 12 L d T`` FLOPs per token, PaLM appendix B /
   nanoGPT's ``estimate_mfu``, against the GPU's dense bf16 peak: ``--peak-tflops`` or the
   table below) and peak memory.
2. **Generation** (``--generate``): greedy cached decoding of ``--new-tokens`` tokens after
   equal-length prompts at batch 1 and 64, for the Llama-style model in bf16 weights:
   anyformer eager, anyformer ``compile=True``, a gpt-fast-style lean reference (plain tensors,
   a static KV cache, the decode step compiled with ``mode="reduce-overhead"`` on CUDA),
   x-transformers 1.28 and Hugging Face (``LlamaForCausalLM.generate`` with its static cache,
   which it compiles). Every model holds the same weights (the Hugging Face model's, through
   ``anyformer.convert``); each peer's greedy tokens are compared with anyformer's, and the lean
   reference must equal anyformer token for token in float32 (the dry run checks that).

``--dry-run`` runs everything on the CPU with tiny shapes, float32 and a few steps (no
compilation unless ``--compile`` is given): a check that the script works, in a few seconds.

    python benchmarks/bench_gpu.py                 # on a GPU: everything
    python benchmarks/bench_gpu.py --dry-run       # anywhere, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_batched, beside this file

from bench_batched import xt_expressible_state_dict

from anyformer import AutoregressiveWrapper, Decoder, TransformerWrapper
from anyformer.convert import from_hf

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A40": 150.0,
                    "A10": 125.0, "L4": 121.0, "4090": 165.0, "3090": 71.0}  # fmt: skip
"""Dense bf16 tensor-core peaks (TFLOP/s, SXM parts) by GPU name fragment (vendors' sheets)."""


@dataclass(frozen=True)
class Shape:
    """A model shape: width, blocks, heads, key/value heads, feedforward width, vocabulary."""

    dim: int
    depth: int
    heads: int
    kv_heads: int
    ff_inner: int
    vocab: int
    seq: int


FULL = {
    "gpt2-124m": Shape(768, 12, 12, 12, 3072, 50304, 1024),
    "llama-style": Shape(768, 12, 12, 4, 2048, 32000, 1024),
}
TINY = {
    "gpt2-124m": Shape(32, 2, 2, 2, 128, 64, 32),
    "llama-style": Shape(64, 2, 2, 1, 128, 64, 32),  # x-transformers: rotary dims >= 32
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, float32, few steps")
    p.add_argument("--device", default=None, help="cuda (default) or cpu (the dry run's)")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="time training steps")  # fmt: skip
    p.add_argument("--generate", action=argparse.BooleanOptionalAction, default=True,
                   help="time cached generation")  # fmt: skip
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile training and the compiled decoders (default: on CUDA)",
    )
    p.add_argument("--train-batch", type=int, default=None, help="sequences per step (16)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (5)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="generation batches")
    p.add_argument("--prompt-len", type=int, default=None, help="generation prompt (128)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated (256)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 peak")
    p.add_argument("--impls", nargs="+", default=None, help="generation cases to run")
    p.add_argument("--json", default=None, help="write the results to this file")
    args = p.parse_args(argv)
    dry = args.dry_run
    defaults = dict(device="cpu" if dry else "cuda", compile=not dry, train_batch=2 if dry else 16,
                    steps=2 if dry else 20, warmup=1 if dry else 5,
                    batches=[1, 4] if dry else [1, 64], prompt_len=8 if dry else 128,
                    new_tokens=8 if dry else 256)  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.shapes = TINY if dry else FULL
    args.dtype = torch.float32 if dry else torch.bfloat16
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(args: argparse.Namespace, device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s (None when unknown: no MFU then)."""
    if args.peak_tflops is not None:
        return args.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    found = [tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name]
    return found[0] * 1e12 if found else None


# --------------------------------------------------------------------------------------
# training


def build_model(name: str, shape: Shape) -> TransformerWrapper:
    if name == "gpt2-124m":
        layers = Decoder(dim=shape.dim, depth=shape.depth, heads=shape.heads,
                         attn_dim_head=shape.dim // shape.heads, attn_flash=True)  # fmt: skip
        return TransformerWrapper(num_tokens=shape.vocab, max_seq_len=shape.seq,
                                  attn_layers=layers, tie_embedding=True)  # fmt: skip
    layers = Decoder(
        dim=shape.dim, depth=shape.depth, heads=shape.heads, attn_kv_heads=shape.kv_heads,
        attn_dim_head=shape.dim // shape.heads, rotary_pos_emb=True, use_rmsnorm=True, ff_glu=True, ff_swish=True, ff_no_bias=True,
        ff_mult=shape.ff_inner / shape.dim, attn_flash=True,
    )  # fmt: skip
    return TransformerWrapper(num_tokens=shape.vocab, max_seq_len=shape.seq, attn_layers=layers,
                              use_abs_pos_emb=False)  # fmt: skip


def flops_per_token(model: nn.Module, shape: Shape) -> float:
    """6 N (weights, without the learned positions) + 12 L d T (attention scores and values)."""
    n = sum(p.numel() for p in model.parameters())
    pos = getattr(model, "pos_emb", None)
    n -= sum(p.numel() for p in pos.parameters()) if isinstance(pos, nn.Module) else 0
    return 6 * n + 12 * shape.depth * shape.dim * shape.seq


def train_figures(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Tokens/s, MFU and peak memory of the training step of one model."""
    shape = args.shapes[name]
    torch.manual_seed(0)
    model = build_model(name, shape).to(device)
    wrapper = AutoregressiveWrapper(model).train()
    step_loss = torch.compile(wrapper) if args.compile else wrapper
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    x = torch.randint(0, shape.vocab, (args.train_batch, shape.seq + 1), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.dry_run)
    losses: list[float] = []

    def step() -> None:
        with autocast:
            loss = step_loss(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    tokens_per_s = args.train_batch * shape.seq * args.steps / seconds
    peak = peak_flops(args, device)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "tokens_per_s": tokens_per_s,
        "mfu": None if peak is None else tokens_per_s * flops_per_token(model, shape) / peak,
        "peak_memory_GiB": memory,
        "losses_finite": all(math.isfinite(v) for v in losses),
        "last_loss": losses[-1],
    }


# --------------------------------------------------------------------------------------
# the gpt-fast-style lean reference


class LeanLlama(nn.Module):
    """A Llama decoder as plain tensor code over a static KV cache (gpt-fast's design): the
    weights of a Hugging Face LlamaForCausalLM, q/k/v and gate/up fused, one forward for the
    prefill and the decode step, ``input_pos`` giving the cache columns written."""

    def __init__(self, hf: Any, batch: int, max_len: int) -> None:
        super().__init__()
        cfg: Any = hf.config
        sd: dict[str, Tensor] = hf.state_dict()
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim, self.eps = cfg.hidden_size // self.heads, cfg.rms_norm_eps
        self.emb, self.head = sd["model.embed_tokens.weight"], sd["lm_head.weight"]
        self.final_norm = sd["model.norm.weight"]
        self.layers = [self._layer(sd, f"model.layers.{i}.") for i in range(cfg.num_hidden_layers)]
        like = self.emb.new_zeros(
            cfg.num_hidden_layers, batch, self.kv_heads, max_len, self.head_dim
        )
        self.k_cache, self.v_cache = like.clone(), like.clone()
        theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
        inv = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, device=like.device) / self.head_dim)
        angles = torch.outer(torch.arange(max_len, device=like.device).float(), inv)
        angles = torch.cat((angles, angles), dim=-1)
        self.cos, self.sin = angles.cos().to(self.emb.dtype), angles.sin().to(self.emb.dtype)
        self.causal = torch.ones(max_len, max_len, dtype=torch.bool, device=like.device).tril()

    @staticmethod
    def _layer(sd: dict[str, Tensor], p: str) -> dict[str, Tensor]:
        a, m = p + "self_attn.", p + "mlp."
        return {
            "wqkv": torch.cat([sd[a + f"{x}_proj.weight"] for x in "qkv"]),
            "wo": sd[a + "o_proj.weight"],
            "w13": torch.cat((sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"])),
            "w2": sd[m + "down_proj.weight"],
            "attn_norm": sd[p + "input_layernorm.weight"],
            "ff_norm": sd[p + "post_attention_layernorm.weight"],
        }

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * weight

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        """tokens (b, t) at cache columns input_pos (t,) -> the last position's logits (b, V)."""
        b, t = tokens.shape
        x, cos, sin = F.embedding(tokens, self.emb), self.cos[input_pos], self.sin[input_pos]
        mask = self.causal[input_pos]
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, w in enumerate(self.layers):
            qkv = F.linear(self._norm(x, w["attn_norm"]), w["wqkv"])
            q, k, v = qkv.split((q_size, kv_size, kv_size), dim=-1)
            q = self._rope(q.view(b, t, self.heads, -1).transpose(1, 2), cos, sin)
            k = self._rope(k.view(b, t, self.kv_heads, -1).transpose(1, 2), cos, sin)
            self.k_cache[i].index_copy_(2, input_pos, k)
            self.v_cache[i].index_copy_(
                2, input_pos, v.view(b, t, self.kv_heads, -1).transpose(1, 2)
            )
            att = F.scaled_dot_product_attention(
                q, self.k_cache[i], self.v_cache[i], attn_mask=mask, enable_gqa=True
            )
            x = x + F.linear(att.transpose(1, 2).reshape(b, t, q_size), w["wo"])
            gate, up = F.linear(self._norm(x, w["ff_norm"]), w["w13"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w["w2"])
        return F.linear(self._norm(x[:, -1], self.final_norm), self.head)

    @torch.no_grad()
    def generate(self, prompts: Tensor, new: int, step: Callable[..., Tensor]) -> Tensor:
        """Greedy: the prefill eagerly, then `new` - 1 calls of `step` (the compiled forward)."""
        n = prompts.shape[1]
        token = self(prompts, torch.arange(n, device=prompts.device)).argmax(-1)
        out = [token]
        for i in range(new - 1):
            pos = torch.tensor([n + i], device=prompts.device)
            token = step(token[:, None], pos).argmax(-1).clone()
            out.append(token)
        return torch.stack(out, dim=1)


# --------------------------------------------------------------------------------------
# generation


def hf_llama(shape: Shape, device: torch.device, dtype: torch.dtype) -> Any:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=shape.dim, num_hidden_layers=shape.depth, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, intermediate_size=shape.ff_inner,
        vocab_size=shape.vocab, max_position_embeddings=2048, initializer_range=0.05,
        bos_token_id=None, eos_token_id=None, pad_token_id=0, rms_norm_eps=1e-6,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval().to(device=device, dtype=dtype)


def x_transformers_twin(ours: nn.Module, shape: Shape) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import x_transformers as xt  # type: ignore[import-untyped]
    layers = xt.Decoder(
        dim=shape.dim, depth=shape.depth, heads=shape.heads, attn_kv_heads=shape.kv_heads,
        attn_dim_head=shape.dim // shape.heads, rotary_pos_emb=True, rotary_emb_dim=shape.dim // shape.heads, use_rmsnorm=True,
        ff_glu=True, ff_swish=True, ff_no_bias=True, ff_mult=shape.ff_inner / shape.dim,
        attn_flash=True,
    )  # fmt: skip
    net = xt.TransformerWrapper(num_tokens=shape.vocab, max_seq_len=2048, attn_layers=layers,
                                use_abs_pos_emb=False)  # fmt: skip
    net.load_state_dict(xt_expressible_state_dict(ours))
    param = next(ours.parameters())
    return xt.AutoregressiveWrapper(net.to(device=param.device, dtype=param.dtype)).eval()


def greedy(lm: AutoregressiveWrapper, prompts: Tensor, n: int, **kwargs: Any) -> Tensor:
    out = lm.generate(prompts, n, temperature=0.0, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def generation_cases(
    args: argparse.Namespace, hf: Any, ours: nn.Module, batch: int
) -> dict[str, Callable[[Tensor], Tensor]]:
    """name -> prompts (b, n) -> greedy new tokens (b, new_tokens)."""
    n, shape = args.new_tokens, args.shapes["llama-style"]
    lm = AutoregressiveWrapper(ours)
    cases: dict[str, Callable[[Tensor], Tensor]] = {
        "anyformer": lambda p: greedy(lm, p, n),
    }
    if args.compile:
        cases["anyformer-compiled"] = lambda p: greedy(lm, p, n, compile=True)
    lean = LeanLlama(hf, batch, args.prompt_len + n)
    mode = "reduce-overhead" if args.device == "cuda" else "default"
    step = torch.compile(lean, mode=mode, fullgraph=True) if args.compile else lean
    cases["lean-reference"] = lambda p: lean.generate(p, n, step)
    try:
        xlm = x_transformers_twin(ours, shape)
        cases["x-transformers"] = lambda p: xlm.generate(p, n, temperature=0.0, cache_kv=True)
    except ImportError:
        pass
    static = {"cache_implementation": "static"} if args.compile else {}

    def huggingface(p: Tensor) -> Tensor:
        out = hf.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=n,
                          min_new_tokens=n, do_sample=False, pad_token_id=0, **static)  # fmt: skip
        return out[:, p.shape[1] :]

    cases["huggingface"] = huggingface
    wanted = args.impls
    return {k: v for k, v in cases.items() if wanted is None or k in wanted or k == "anyformer"}


def generation_figures(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Per batch: tokens/s of each case and its greedy agreement with anyformer."""
    shape = args.shapes["llama-style"]
    hf = hf_llama(shape, device, args.dtype)
    ours = from_hf(hf).to(device=device, dtype=args.dtype).eval()
    result: dict[str, Any] = {}
    for batch in args.batches:
        g = torch.Generator().manual_seed(batch)
        prompts = torch.randint(1, shape.vocab, (batch, args.prompt_len), generator=g).to(device)
        cases = generation_cases(args, hf, ours, batch)
        with torch.inference_mode():
            tokens = {name: case(prompts) for name, case in cases.items()}  # warm-up / compile
            seconds = {name: timed(case, prompts, device, reps=1 if args.dry_run else 3)
                       for name, case in cases.items()}  # fmt: skip
        mine = tokens["anyformer"]
        result[f"batch{batch}"] = {
            name: {
                "tokens_per_s": batch * args.new_tokens / seconds[name],
                "rows_identical": int((tokens[name] == mine).all(dim=1).sum()),
                "rows": batch,
            }
            for name in cases
        }
    return result


def timed(
    case: Callable[[Tensor], Tensor], prompts: Tensor, device: torch.device, reps: int
) -> float:
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        case(prompts)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------
# main


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """All figures as a dict (what ``main`` prints)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"skipped": "no CUDA device (use --dry-run for the CPU check)"}
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
        "compile": args.compile,
        "peak_tflops": None if (p := peak_flops(args, device)) is None else p / 1e12,
    }
    if args.train:
        result["train"] = {name: train_figures(name, args, device) for name in args.shapes}
    if args.generate:
        result["generate"] = generation_figures(args, device)
    return result


def main(argv: list[str] | None = None) -> int:
    result = run(argv)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    args = parse_args(argv)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
