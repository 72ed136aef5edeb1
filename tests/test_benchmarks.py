"""The GPU benchmark scripts' CPU dry runs (``--dry-run``): they run, their figures are finite
and their equality checks hold. The GPU figures themselves come from a GPU, not from tests."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cuda_check_dry_run_passes_every_check_with_finite_figures():
    cuda_check = _load("cuda_check")
    results = cuda_check.run(["--dry-run"])
    # 6 configurations x (3 fused-vs-explicit dtypes + cached-vs-uncached + bf16 step)
    assert len(results) == 6 * 5
    assert [name for name, ok, _ in results if not ok] == []
    for name, _, detail in results:
        if "fused-vs-explicit" in name:
            diff = float(re.fullmatch(r"max abs diff (\S+)", detail).group(1))
            assert math.isfinite(diff) and diff < 0.1, (name, diff)
        elif "cached-equals-uncached" in name:
            assert detail.startswith("2/2 rows identical"), (name, detail)
        else:
            loss = float(re.fullmatch(r"loss (\S+)", detail).group(1))
            # a fresh model predicts about uniformly over its 64 tokens: ln 64 = 4.16
            assert abs(loss - math.log(64)) < 0.5, (name, loss)
    assert cuda_check.FAILED == []  # what main's exit status reads


@pytest.mark.filterwarnings("ignore::FutureWarning")  # x-transformers 1.28's torch calls
def test_bench_gpu_dry_run_figures_are_finite_and_tokens_agree():
    bench_gpu = _load("bench_gpu")
    result = bench_gpu.run(["--dry-run"])
    assert result["device"] == "cpu" and result["dry_run"] is True
    assert set(result["train"]) == {"gpt2-124m", "llama-style"}
    for name, figures in result["train"].items():
        assert figures["losses_finite"] is True, name
        assert math.isfinite(figures["tokens_per_s"]) and figures["tokens_per_s"] > 0
        assert figures["mfu"] is None  # no bf16 peak known for a CPU
        assert abs(figures["last_loss"] - math.log(64)) < 0.5, (name, figures["last_loss"])
    assert set(result["generate"]) == {"batch1", "batch4"}
    for batch, cases in result["generate"].items():
        assert {"anyformer", "lean-reference", "huggingface"} <= set(cases)
        for name, figures in cases.items():
            rate = figures["tokens_per_s"]
            assert math.isfinite(rate) and rate > 0, (batch, name, rate)
        rows = cases["anyformer"]["rows"]
        assert rows == int(batch.removeprefix("batch"))
        # float32, the same weights: greedy tokens identical row for row
        assert cases["lean-reference"]["rows_identical"] == rows
        assert cases["huggingface"]["rows_identical"] == rows


def test_bench_sliding_dry_run_is_blockwise_and_equals_the_masked_window():
    bench_sliding = _load("bench_sliding")
    result = bench_sliding.run(["--dry-run", "--threads", "1"])
    assert result["dry_run"] is True and (result["n"], result["window"]) == (512, 32)
    assert result["window_kernels"] == ["banded", "banded"]  # the O(n W) kernel ran
    assert result["max_abs_diff_vs_masked"] < 1e-5  # float32, the same weights
    figures = result["threads"]["1"]
    assert figures["threads"] == 1
    for key in ("full_s", "sliding_s", "speedup"):
        assert math.isfinite(figures[key]) and figures[key] > 0, key
