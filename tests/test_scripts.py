"""scripts/setup.sh installs once and skips when nothing changed; scripts/main.sh runs `anyformer train`.

The scripts run in a copy of the repository whose .venv/bin/python is a stub: it records how it
was called and stands in for pip, so nothing is installed and no network is needed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STUB = """#!/usr/bin/env bash
echo "$*" >> "{log}"
case "$*" in
  *"-m pip"*) touch "{installed}"; exit 0 ;;
  *"find_spec"*) [ -f "{installed}" ]; exit $? ;;
  *"import anyformer, torch"*) echo "anyformer 0 | torch 0"; exit 0 ;;
  *"-m anyformer"*) echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY" >> "{log}"; exit 0 ;;
  *) exec "{python}" "$@" ;;
esac
"""


@pytest.fixture
def repo(tmp_path):
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    stub = bin_dir / "python"
    stub.write_text(
        STUB.format(
            log=tmp_path / "calls.log", installed=tmp_path / "installed", python=sys.executable
        )
    )
    stub.chmod(0o755)
    return tmp_path


def run_script(repo: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(repo / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def pip_calls(repo: Path) -> list[str]:
    log = repo / "calls.log"
    return (
        [line for line in log.read_text().splitlines() if "-m pip" in line] if log.exists() else []
    )


def test_setup_installs_once_then_skips(repo):
    first = run_script(repo, "setup.sh")
    assert first.returncode == 0, first.stderr
    assert [c.split("install -q ")[1] for c in pip_calls(repo)] == ["torch==2.13.0", "-e .[test]"]
    (repo / "calls.log").unlink()
    second = run_script(repo, "setup.sh")
    assert second.returncode == 0, second.stderr
    assert pip_calls(repo) == []
    assert second.stderr == "[setup] .venv is up to date\n"


def test_setup_installs_again_when_something_changed(repo):
    assert run_script(repo, "setup.sh").returncode == 0
    with open(repo / "pyproject.toml", "a") as f:
        f.write("\n# a new dependency, say\n")
    (repo / "calls.log").unlink()
    assert run_script(repo, "setup.sh").returncode == 0
    assert len(pip_calls(repo)) == 2
    (repo / "calls.log").unlink()
    (repo / "installed").unlink()  # the package went missing from .venv
    assert run_script(repo, "setup.sh").returncode == 0
    assert len(pip_calls(repo)) == 2


def test_main_runs_anyformer_train_with_the_arguments(repo):
    proc = run_script(repo, "main.sh", "steps=5", "--quiet")
    assert proc.returncode == 0, proc.stderr
    calls = (repo / "calls.log").read_text().splitlines()
    assert calls[-2:] == ["-m anyformer train steps=5 --quiet", "OMP_WAIT_POLICY=PASSIVE"]
