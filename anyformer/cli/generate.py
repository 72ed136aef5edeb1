"""``anyformer generate DIR``: stream a sample from a saved run or model folder.

The sampling options default to those the run printed its final sample with, so
``anyformer generate runs/latest`` repeats that sample; the text equals the library's
``generate`` with the same options and a ``torch.Generator`` seeded with ``--seed``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..quantize import DTYPES, METHODS, prepare_for_decoding
from .common import load_model, require_bytes, saved_train_config
from .config import TrainConfig
from .errors import CLIError
from .options import int_at_least, non_empty, number_in, optional, seed
from .sampling import SamplingOptions, stream_bytes

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser(
        "generate",
        help="sample text from a saved run or model folder",
        description=(
            "Stream text generated after --prompt. Options not given default to those of the "
            "run's final sample (prompt, temperature, seed, and the filters unless one of "
            "--top-k, --top-p, --min-p is given)."
        ),
        formatter_class=formatter,
    )
    p.add_argument("dir", metavar="DIR", help="run folder (its newest checkpoint) or model folder")
    p.add_argument("--prompt", type=non_empty, help="text to continue")
    p.add_argument("--max-new-tokens", type=int_at_least(1), metavar="N", help="bytes to generate")
    p.add_argument("--temperature", type=number_in(0, None), metavar="T", help="0 is greedy")
    p.add_argument(
        "--top-k", type=optional(int_at_least(1)), metavar="K", help="keep the K likeliest bytes"
    )
    p.add_argument(
        "--top-p",
        type=optional(number_in(0, 1, low_open=True)),
        metavar="P",
        help="nucleus threshold, in (0, 1] (https://arxiv.org/abs/1904.09751)",
    )
    p.add_argument(
        "--min-p",
        type=optional(number_in(0, 1)),
        metavar="P",
        help="min-p threshold, in [0, 1] (https://arxiv.org/abs/2407.01082)",
    )
    p.add_argument("--seed", type=seed, help="seed of the sampling generator, in [0, 2**63)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="decode with the weights in this float format (bf16: half the bytes; the saved "
        "model is not changed)",
    )
    p.add_argument(
        "--quantize",
        choices=METHODS,
        help="decode with weight-only int8 (per row) or int4 (groups of 32) linear maps: int4 is "
        "the fastest on CPU, int8 only saves memory",
    )


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def run(args: argparse.Namespace, argv: list[str]) -> int:
    folder, lm = load_model(args.dir, args.device)
    require_bytes(folder, lm, "generate")
    lm = prepare_for_decoding(lm, args.dtype, args.quantize)
    saved = saved_train_config(folder) or TrainConfig()
    filters_given = any(arg.split("=")[0] in ("--top-k", "--top-p", "--min-p") for arg in argv)
    source = args if filters_given else saved  # a filter given replaces the run's set
    options = SamplingOptions(
        temperature=_pick(args.temperature, saved.temperature),
        top_k=source.top_k,
        top_p=source.top_p,
        min_p=source.min_p,
    )
    prompt = _pick(args.prompt, saved.prompt)
    n = _pick(args.max_new_tokens, saved.sample_len)
    if n < 1:  # the run's sample_len may be 0
        raise CLIError(f"--max-new-tokens must be >= 1, got {n} (the run's sample_len)")
    sys.stdout.write(prompt)
    sys.stdout.flush()
    try:
        stream_bytes(
            lm, prompt.encode(), n, options, _pick(args.seed, saved.seed),
            write=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()),
        )  # fmt: skip
    except (TypeError, ValueError) as e:  # a filter threshold out of range, say
        raise CLIError(str(e)) from e
    sys.stdout.write("\n")
    return 0
