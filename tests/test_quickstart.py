"""Tests for the quick-start command (anyformer.cli.quickstart)."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from anyformer.cli.quickstart import build_parser, main

TINY = [
    "--steps", "30",
    "--dim", "64",
    "--depth", "1",
    "--heads", "4",
    "--batch-size", "8",
    "--seq-len", "64",
    "--eval-batches", "2",
    "--sample-len", "40",
    "--prompt-len", "16",
    "--max-bytes", "200000",
    "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run():
    return main(TINY)


def test_tiny_run_learns(tiny_run):
    result = tiny_run
    # An untrained byte-level model predicts roughly uniformly: log2(256) = 8 bits per byte.
    assert abs(result["first_bpb"] - math.log2(256)) < 1.0
    assert result["last_bpb"] < result["first_bpb"]
    assert result["drop_bpb"] == pytest.approx(result["first_bpb"] - result["last_bpb"])
    assert result["history"][0] == (0, result["first_bpb"])
    assert result["history"][-1] == (30, result["last_bpb"])
    assert all(math.isfinite(bpb) for _, bpb in result["history"])


def test_tiny_run_sample(tiny_run):
    tokens = tiny_run["sample_tokens"]
    assert len(tokens) == 40
    assert all(0 <= t < 256 for t in tokens)
    assert tiny_run["sample"] == bytes(tokens).decode("utf-8", errors="replace")
    assert len(tiny_run["prompt"].encode("utf-8", errors="replace")) >= 1


def test_prints_summary_and_is_deterministic(tiny_run, capsys):
    again = main(TINY)
    out = capsys.readouterr().out
    match = re.search(r"val bpb: (\d+\.\d\d) -> (\d+\.\d\d) \(drop (-?\d+\.\d\d)\)", out)
    assert match is not None, out
    assert float(match.group(1)) == pytest.approx(again["first_bpb"], abs=0.005)
    assert float(match.group(2)) == pytest.approx(again["last_bpb"], abs=0.005)
    # Same seed, same numbers (CPU, same process).
    assert again["first_bpb"] == pytest.approx(tiny_run["first_bpb"], rel=1e-6)
    assert again["last_bpb"] == pytest.approx(tiny_run["last_bpb"], rel=1e-4)
    assert again["sample_tokens"] == tiny_run["sample_tokens"]


def test_zero_steps_and_no_sample():
    result = main([*TINY, "--steps", "0", "--sample-len", "0"])
    assert result["first_bpb"] == result["last_bpb"]
    assert result["drop_bpb"] == 0.0
    assert result["sample_tokens"] == []
    assert result["sample"] == ""


def test_defaults():
    args = build_parser().parse_args([])
    assert (args.steps, args.seq_len, args.dim, args.depth, args.heads) == (300, 128, 128, 3, 4)
    assert args.lr == pytest.approx(3e-3)
    assert (args.sample_len, args.seed, args.threads) == (200, 0, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dim", "30", "--heads", "4"], "--dim"),
        (["--steps", "-1"], "--steps"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "0"], "--lr"),
        (["--temperature", "-1"], "--temperature"),
        (["--threads", "0"], "--threads"),
        (["--max-bytes", "0"], "--max-bytes"),
        (["--max-bytes", "100", "--seq-len", "64"], "--seq-len"),
    ],
)
def test_bad_arguments_exit_with_message(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_module_entry_point_help():
    proc = subprocess.run(
        [sys.executable, "-m", "anyformer.cli.quickstart", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--steps" in proc.stdout and "--sample-len" in proc.stdout


def test_module_entry_point_runs_and_exits_zero():
    proc = subprocess.run(
        [sys.executable, "-m", "anyformer.cli.quickstart", *TINY, "--steps", "2", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"val bpb: \d+\.\d\d -> \d+\.\d\d \(drop -?\d+\.\d\d\)", proc.stdout)
    assert "--- sample (40 bytes" in proc.stdout


def test_cli_returns_none(monkeypatch, capsys):
    from anyformer.cli import quickstart

    monkeypatch.setattr(sys, "argv", ["anyformer-quickstart", *TINY, "--steps", "0"])
    assert quickstart.cli() is None
    assert "val bpb:" in capsys.readouterr().out
