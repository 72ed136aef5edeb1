"""``anyformer train`` runs with OMP_WAIT_POLICY=PASSIVE however it is started (issue 20, item 3)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import anyformer
from anyformer.cli import launch

ROOT = str(Path(anyformer.__file__).resolve().parents[1])


def test_train_reexecutes_with_the_same_package_and_arguments(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    command = launch.passive_command(["train", "--preset", "tiny", "steps=3"])
    assert command is not None
    assert command[0] == sys.executable and command[1] == "-c"
    assert command[3:] == ["train", "--preset", "tiny", "steps=3"]
    assert f"sys.path.insert(0, {ROOT!r})" in command[2]  # this checkout's anyformer, first


@pytest.mark.parametrize(
    "argv",
    [["generate", "runs/latest"], ["train", "--help"], ["train", "--list-keys"], ["--version"], []],
)
def test_no_reexecution_without_training(argv, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert launch.passive_command(argv) is None


def test_a_users_own_setting_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert launch.passive_command(["train"]) is None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_a_directly_started_train_runs_with_the_passive_wait_policy(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    args = ["--preset", "tiny", "steps=100000", "--out", str(tmp_path / "r"), "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "anyformer", "train", *args], env=env, stdout=subprocess.DEVNULL
    )
    environ: list[bytes] = []
    try:  # the same process (execve keeps the pid) shows its new environment once re-executed
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
            if any(e.startswith(b"OMP_WAIT_POLICY=") for e in environ):
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert b"OMP_WAIT_POLICY=PASSIVE" in environ


SPY = """
import os, sys
seen = []
class Spy:  # records the setting at the moment torch is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, Spy())
sys.argv = ["anyformer", *sys.argv[1:]]
import anyformer_cli
print(seen)
"""


def test_the_console_entry_sets_the_wait_policy_before_torch_starts():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run(
        [sys.executable, "-c", SPY, "train", "--preset", "tiny"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "['PASSIVE']\n"  # so the command has nothing to re-execute
