"""Checkpoints and resume: exact continuation, SIGKILL at random moments, Ctrl-C saves."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from anyformer import load_pretrained
from anyformer.cli.checkpoint import DELAY_ENV, STATE_NAME, list_checkpoints
from anyformer.cli.main import main

SMALL = [
    "--preset", "tiny", "threads=1", "steps=12", "save_every=4", "eval_every=6",
    "keep_checkpoints=0", "--quiet",
]  # fmt: skip


def losses(run_dir):
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["event"] == "train"}


def weights(checkpoint):
    return load_file(checkpoint / "model.safetensors")


def test_resume_from_step_k_matches_an_uninterrupted_run(tmp_path):
    assert main(["train", *SMALL, "--out", str(tmp_path / "full")]) == 0
    k = tmp_path / "full" / "checkpoints" / "step_0000004"
    assert main(["train", "--resume", str(k), "--out", str(tmp_path / "resumed"), "--quiet"]) == 0
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 13))  # steps 1-4 copied from the source run's log
    for step in range(5, 13):
        assert resumed[step] == pytest.approx(full[step], abs=1e-6, rel=0)
    a = weights(tmp_path / "full" / "checkpoints" / "step_0000012")
    b = weights(tmp_path / "resumed" / "checkpoints" / "step_0000012")
    assert all(torch.allclose(a[name], b[name], atol=1e-6, rtol=0) for name in a)


def test_resume_refuses_another_model(tmp_path, capsys):
    assert main(["train", *SMALL, "steps=4", "--out", str(tmp_path / "r")]) == 0
    assert main(["train", "--resume", str(tmp_path / "r"), "dim=48", "heads=2"]) == 2
    err = capsys.readouterr().err
    assert "holds another model (attn_layers.dim: 32 in the checkpoint, 48 here)" in err
    assert err.count("\n") == 1


def test_resume_can_extend_a_finished_run(tmp_path):
    assert main(["train", *SMALL, "steps=4", "--out", str(tmp_path / "r")]) == 0
    assert main(["train", "--resume", str(tmp_path / "r"), "steps=6", "--quiet"]) == 0
    assert sorted(losses(tmp_path / "r")) == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in list_checkpoints(tmp_path / "r")] == [4, 6]


def test_resume_through_the_latest_link_keeps_the_link(tmp_path, monkeypatch):
    """The README's `anyformer train --resume runs/latest steps=...` (was: latest -> latest)."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", *SMALL, "steps=4"]) == 0
    (run_name,) = [p.name for p in (tmp_path / "runs").iterdir() if p.name != "latest"]
    assert os.readlink("runs/latest") == run_name
    assert main(["train", "--resume", "runs/latest", "steps=6", "--quiet"]) == 0
    assert os.readlink("runs/latest") == run_name
    run = tmp_path / "runs" / run_name
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in list_checkpoints(run)] == [4, 6]


def _train_quietly(argv):
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os._exit(main(argv))


def _temporaries(run_dir) -> set[str]:
    """Checkpoint writes under way (or cut short): hidden temporary folders."""
    root = run_dir / "checkpoints"
    try:
        return {p.name for p in root.iterdir() if p.name.startswith(".anyformer-tmp-")}
    except OSError:
        return set()


def _logged_steps(run_dir) -> list[int]:
    try:
        return list(losses(run_dir))
    except (OSError, ValueError):  # not there yet, or a line being written
        return []


def _wait_for(child, condition, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and child.is_alive() and not condition():
        time.sleep(0.002)


def _complete_checkpoints_load(run_dir):
    found = list_checkpoints(run_dir)
    if not found:
        return None
    step, newest = found[-1]
    model = load_pretrained(newest)
    state = torch.load(newest / STATE_NAME, weights_only=True)
    assert state["step"] == step
    assert sum(p.numel() for p in model.parameters()) > 0
    return step


def test_nothing_is_lost_to_sigkill(tmp_path, monkeypatch):
    """20 kills at random moments, half while a checkpoint is being written."""
    argv = [*SMALL, "steps=60", "save_every=3", "keep_checkpoints=2"]
    run_dir = tmp_path / "run"
    # the uninterrupted run first: it also imports, in this process, what the forked runs use
    assert main(["train", *argv, "--out", str(tmp_path / "clean")]) == 0
    rng = random.Random(1234)
    monkeypatch.setenv(DELAY_ENV, "0.02")  # widens each checkpoint write to 60 ms or more
    fork = multiprocessing.get_context("fork")
    during_write, steps_seen = 0, []
    for i in range(20):
        if (run_dir / "run.json").exists():
            command = ["train", "--resume", str(run_dir), "--quiet"]
        else:
            command = ["train", *argv, "--out", str(run_dir)]
        before = max(_logged_steps(run_dir), default=0)
        old = _temporaries(run_dir)  # left by the last kill; this run removes them
        child = fork.Process(target=_train_quietly, args=(command,))
        child.start()
        if i % 2:  # wait for a checkpoint write to begin, then kill inside it
            _wait_for(child, lambda old=old: bool(_temporaries(run_dir) - old))
            time.sleep(rng.uniform(0, 0.03))
        else:  # wait for a step past the last run's furthest, then kill at a random moment
            _wait_for(child, lambda before=before: max(_logged_steps(run_dir), default=0) > before)
            time.sleep(rng.uniform(0.0, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL  # killed, not finished nor failed
        during_write += bool(_temporaries(run_dir) - old)
        steps_seen.append(_complete_checkpoints_load(run_dir))
    assert during_write >= 5, during_write
    seen = [s or 0 for s in steps_seen]
    assert seen == sorted(seen) and seen[-1] >= 9, seen  # checkpoints only ever move forward
    # the run then finishes from its newest checkpoint and matches an uninterrupted one
    monkeypatch.delenv(DELAY_ENV)
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    a = weights(run_dir / "checkpoints" / "step_0000060")
    b = weights(tmp_path / "clean" / "checkpoints" / "step_0000060")
    assert all(torch.allclose(a[name], b[name], atol=1e-6, rtol=0) for name in a)
    assert losses(run_dir) == pytest.approx(losses(tmp_path / "clean"), abs=1e-6)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "anyformer", "train", *SMALL, "steps=100000", "save_every=100000",
         "eval_every=100000", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and len(losses(out) if (out / "log.jsonl").exists() else {}) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    (step, checkpoint), *_ = list_checkpoints(out)
    assert 3 <= step < 100000
    assert f"interrupted at step {step}: checkpoint {checkpoint}" in err
    assert max(losses(out)) == step
    state = torch.load(checkpoint / STATE_NAME, weights_only=True)
    assert state["step"] == step
    assert not (out / ".anyformer.lock").exists()  # Ctrl-C released the run folder's lock


def test_resume_with_no_steps_left_is_refused_saying_so(tmp_path, capsys):
    assert main(["train", *SMALL, "steps=4", "--out", str(tmp_path / "r")]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    capsys.readouterr()
    for steps in ("steps=4", "steps=3"):
        assert main(["train", "--resume", str(tmp_path / "r"), steps, "--quiet"]) == 2
        checkpoint = tmp_path / "r" / "checkpoints" / "step_0000004"
        assert capsys.readouterr().err == (
            f"anyformer: error: nothing to do: the checkpoint '{checkpoint}' is at step 4 and "
            f"steps is {steps[6:]}; give steps=N with N > 4 to train further\n"
        )
    after = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert after == before  # nothing written, not even the log


def test_load_pretrained_takes_a_run_folder_as_its_newest_checkpoint(tmp_path):
    assert main(["train", *SMALL, "steps=8", "--out", str(tmp_path / "r")]) == 0
    from_run = load_pretrained(tmp_path / "r").net.state_dict()
    newest = weights(tmp_path / "r" / "checkpoints" / "step_0000008")
    assert set(from_run) == set(newest)
    assert all(torch.equal(from_run[name], newest[name]) for name in newest)
