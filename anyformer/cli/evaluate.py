"""``anyformer eval DIR``: validation bits per byte of a saved run or model folder.

The validation windows are those the run evaluated on (its data, seq_len, batch_size,
eval_batches and seed), so the number equals the run's last logged evaluation; ``--data``
evaluates on another text's validation split.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import torch

from .common import load_model, model_max_len, require_bytes, saved_train_config
from .config import TrainConfig
from .data import LN2, evaluate, load_data
from .distributed import Dist
from .errors import CLIError
from .options import int_at_least

__all__ = ["add_parser", "run"]

_DOC = __doc__ or ""


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser(
        "eval",
        help="print validation bits per byte of a saved run or model folder",
        description=_DOC.split("\n\n")[1].replace("\n", " ").replace("``", ""),
        formatter_class=formatter,
    )
    p.add_argument("dir", metavar="DIR", help="run folder (its newest checkpoint) or model folder")
    p.add_argument("--data", metavar="PATH", help="text file, folder or .gz/.bz2 file")
    p.add_argument(
        "--batches", type=int_at_least(1), metavar="N", help="validation batches (of batch_size)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.data is not None and not os.path.lexists(args.data):
        raise CLIError(f"--data {args.data!r} does not exist")
    folder, lm = load_model(args.dir, args.device)
    require_bytes(folder, lm, "eval")
    config = saved_train_config(folder)
    if config is None:
        config = TrainConfig(seq_len=min(model_max_len(lm), 1024))
    if args.batches is not None:
        config = dataclasses.replace(config, eval_batches=args.batches)
    data = load_data(config, args.data)
    device = next(lm.parameters()).device
    dist = Dist(rank=0, world=1, local_rank=0, device=device)
    config = dataclasses.replace(config, grad_accum=1)
    with torch.no_grad():
        loss = evaluate(lm, data.val, config, dist, device)
    windows = config.eval_batches * config.batch_size
    print(
        f"validation bits per byte: {loss / LN2:.4f} ({windows} windows of {config.seq_len} "
        f"bytes from the validation split of {data.source}; model {folder})"
    )
    return 0
