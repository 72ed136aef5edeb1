"""The ``anyformer`` command: ``train``, ``generate``, ``eval``, ``info`` and ``export-hf``.

Mistakes a user can make (a missing data path, an unknown key or preset, a checkpoint of
another model, running out of memory) end with one line, ``anyformer: error: ...``, and exit
status 2 (configuration) or 1 (at run time); set ``ANYFORMER_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from . import evaluate, export, generate, info, train
from .errors import CLIError
from .launch import reexec_passive

__all__ = ["build_parser", "main"]

COMMANDS = {
    "train": train,
    "generate": generate,
    "eval": evaluate,
    "info": info,
    "export-hf": export,
}


class HelpFormatter(argparse.HelpFormatter):
    """Shows a default only where there is one (no "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anyformer",
        description="Train, evaluate and sample byte-level transformer language models.",
        epilog="Run 'anyformer COMMAND --help' for a command's options.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"anyformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub, HelpFormatter)
    return parser


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit status (0 on success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may follow options: train --quiet steps=10
        if args.command != "train" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return COMMANDS[args.command].run(args, argv[1:])
    except CLIError as e:
        if os.environ.get("ANYFORMER_DEBUG"):
            raise
        if _rank() == 0:
            print(f"anyformer: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        if _rank() == 0:
            print("anyformer: interrupted", file=sys.stderr, flush=True)
        return train.INTERRUPTED


def cli() -> None:
    """Console-script entry point (``train`` re-executes itself once with the fast OpenMP
    setting, see :mod:`anyformer.cli.launch`)."""
    reexec_passive(sys.argv[1:])
    sys.exit(main())


if __name__ == "__main__":
    cli()
