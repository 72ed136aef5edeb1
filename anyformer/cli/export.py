"""``anyformer export-hf DIR OUT``: write a saved run or model folder as a Hugging Face folder.

``DIR`` is found as ``generate`` and ``eval`` find it (a run folder's newest checkpoint, a
checkpoint or a model folder); ``OUT`` must be new or empty. The folder loads with
``transformers``' ``AutoModelForCausalLM.from_pretrained(OUT)``; a model whose options map onto
no Hugging Face family is a one-line error naming them (see :mod:`anyformer.convert.export`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import load_model
from .errors import CLIError
from .model import net_of

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser(
        "export-hf",
        help="write a saved run or model folder as a Hugging Face transformers folder",
        description=(
            "Write the model of DIR (a run folder's newest checkpoint, a checkpoint or a model "
            "folder) to OUT as config.json + model.safetensors in a Hugging Face family's "
            "layout (Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2, GPT-2, ...), loadable with "
            "transformers' "
            "AutoModelForCausalLM.from_pretrained(OUT). Options no family has are refused."
        ),
        formatter_class=formatter,
    )
    p.add_argument("dir", metavar="DIR", help="run folder (its newest checkpoint) or model folder")
    p.add_argument("out", metavar="OUT", help="the Hugging Face folder to write (new or empty)")
    p.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="split the weights into shards of at most SIZE (bytes, or e.g. 500MB, 2GiB)",
    )
    p.add_argument(
        "--family",
        help="write this family (llama, mistral, qwen2, qwen3, phi3, gemma2, ...) or fail",
    )


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from ..convert.export import to_hf_dir

    folder, lm = load_model(args.dir, "cpu")
    try:
        out = to_hf_dir(
            net_of(lm), args.out, max_shard_size=args.max_shard_size, family=args.family
        )
    except FileExistsError as e:
        raise CLIError(str(e).removeprefix("to_hf_dir: ")) from e
    except (TypeError, ValueError) as e:
        message = " ".join(str(e).split()).removeprefix("to_hf: ").removeprefix("to_hf_dir: ")
        raise CLIError(f"cannot export '{folder}': {message}") from e
    config = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    files = sorted(p.name for p in Path(out).iterdir())
    print(f"wrote {out} from {folder}")
    print(f"  {config['architectures'][0]} ({config['model_type']}): {', '.join(files)}")
    print(f"load it with: transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
