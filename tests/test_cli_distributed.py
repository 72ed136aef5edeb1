"""torchrun on CPU (gloo): two processes (DDP or FSDP2) train what one process trains with the same
global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from anyformer.cli.main import main
from anyformer.cli.model import build_model
from anyformer.cli.overrides import build_train_config, resolve_layers

ARGS = ["--preset", "tiny", "threads=1", "steps=1", "eval_batches=2", "sample_len=16"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--standalone", "-m", "anyformer", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp") / "runs"  # made by the tool: it gets a latest link
    proc = torchrun("train", *ARGS, "--out", str(root / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    fsdp = torchrun("train", *ARGS, "fsdp=true", "--out", str(root / "fsdp"))
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert "--- sample: 16 bytes" in fsdp.stdout  # rank 0 samples from the saved folder
    assert main(["train", *ARGS, "--quiet", "--out", str(root / "one")]) == 0
    return root, proc


@pytest.mark.parametrize("name", ["two", "fsdp"])
def test_two_processes_equal_one_after_a_step(runs, name):
    root, _ = runs
    one = load_file(root / "one" / "checkpoints" / "step_0000001" / "model.safetensors")
    two = load_file(root / name / "checkpoints" / "step_0000001" / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=0), key
    # the step moved every matrix by about lr = 3e-3 (AdamW's first step), far above 1e-5
    torch.manual_seed(0)
    layer = resolve_layers("tiny", None, [], {})
    init = build_model(build_train_config(layer), layer["model"]).net.state_dict()
    moved = [float((one[name] - init[name]).abs().max()) for name in one]
    assert min(moved) > 1e-3, moved


def test_same_losses_and_one_writer(runs):
    root, proc = runs

    def log(name):
        lines = (root / name / "log.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    one, two = log("one"), log("two")
    assert [r["event"] for r in two] == ["eval", "train", "eval"]  # rank 0 alone logs
    for a, b in zip(one, two):
        assert a["step"] == b["step"]
        key = "loss" if a["event"] == "train" else "val_loss"
        assert a[key] == pytest.approx(b[key], abs=1e-5)
    for name in ("two", "fsdp"):
        assert sorted(p.name for p in (root / name / "checkpoints").iterdir()) == ["step_0000001"]
        assert not (root / name / ".anyformer.lock").exists()  # rank 0 locked, and released
    assert sorted(p.name for p in root.iterdir()) == ["fsdp", "latest", "one", "two"]
    run = json.loads((root / "two" / "run.json").read_text())
    assert run["world"] == 2
    assert proc.stdout.count("run folder:") == 2  # start and end, printed once (rank 0)
    assert "on cpu (2 processes" in proc.stdout
