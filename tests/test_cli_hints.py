"""The commands the tool prints for the user to run next run as printed (issue 20, item 2)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from anyformer.cli import hints
from anyformer.cli.main import main

TINY = ["--preset", "tiny", "threads=1", "steps=2", "eval_every=2", "sample_len=8"]
VENV_BIN = Path(sys.executable).parent


def _path_without_anyformer() -> str:
    """PATH as a fresh shell after scripts/main.sh has it: no folder with an anyformer script."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(f for f in folders if f and not (Path(f) / "anyformer").exists())


def test_printed_next_step_runs_as_printed_when_anyformer_is_not_on_path(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("PATH", _path_without_anyformer())  # a fresh shell after main.sh
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--out", "runs/a"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("sample again: ")]
    printed = line.removeprefix("sample again: ")
    # the console script of this environment, by its path, since PATH cannot find it (or, in an
    # environment without the script, this interpreter with -m)
    script = VENV_BIN / "anyformer"
    runner = [str(script)] if script.is_file() else [sys.executable, "-m", "anyformer"]
    assert shlex.split(printed)[: len(runner) + 2] == [*runner, "generate", "runs/a"]
    again = subprocess.run(printed, shell=True, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("def ") and len(again.stdout.encode()) >= 4 + 8


@pytest.mark.skipif(not (VENV_BIN / "anyformer").is_file(), reason="no console script installed")
def test_command_is_bare_only_when_path_finds_this_environments_script(monkeypatch, tmp_path):
    script = VENV_BIN / "anyformer"
    monkeypatch.chdir(tmp_path)  # the script is outside: named by its absolute path
    monkeypatch.setattr(hints.shutil, "which", lambda name: str(script))
    assert hints.command() == "anyformer"
    monkeypatch.setattr(hints.shutil, "which", lambda name: "/usr/local/bin/anyformer")
    assert hints.command() == str(script)  # another installation's script is not ours
    monkeypatch.setattr(hints.shutil, "which", lambda name: None)
    assert hints.command() == str(script)
    monkeypatch.chdir(VENV_BIN.parent.parent)  # inside: relative, as the README writes it
    assert hints.command() == f"{VENV_BIN.parent.name}/bin/anyformer"


def test_command_without_a_script_is_python_dash_m(monkeypatch, tmp_path):
    python = tmp_path / "my env" / "bin" / "python"  # no anyformer script beside it
    python.parent.mkdir(parents=True)
    monkeypatch.setattr(hints.sys, "executable", str(python))
    monkeypatch.setattr(hints.shutil, "which", lambda name: None)
    monkeypatch.chdir(tmp_path)
    assert hints.command() == "'my env/bin/python' -m anyformer"


@pytest.mark.parametrize(
    ("path", "expected"),
    [("runs/a", "runs/a"), ("/elsewhere/r b", "'/elsewhere/r b'"), ("{cwd}/runs/x", "runs/x")],
)
def test_shell_path_is_relative_inside_the_working_folder_and_quoted(
    path, expected, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert hints.shell_path(path.format(cwd=tmp_path)) == expected


def test_already_holds_a_run_says_how_to_go_on_both_ways(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", *TINY, "--quiet", "--out", "runs/a"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"anyformer: error: 'runs/a' already holds a run: continue it with {hints.command()} "
        "train --resume runs/a, or start afresh with --out NEW_FOLDER (or without --out, which "
        "makes a new runs/<timestamp>)\n"
    )
