"""Every command the README shows for the command line runs, in order, as a newcomer would type
it (issue 20): the "Command line" section's commands and the quick-start run's follow-ups.

Training commands get keys appended that only shrink the work (``steps=2 seq_len=16 dim=32 ...``;
later keys win), so the test takes seconds; the words the README shows are passed as written, ``~``
expanded as a shell would. The two ``torchrun`` lines need several processes (8 GPUs for the
first): tests/test_cli_distributed.py runs the second's two-process gloo training.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from anyformer.cli.main import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTION = README.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
QUICK_RUN = README.split("\n### The quick-start run", 1)[1].split("\n## ", 1)[0]
FAST = ["batch_size=2", "seq_len=16", "eval_every=2", "eval_batches=1", "save_every=2"]
FAST += ["sample_len=4", "max_bytes=20000", "threads=1", "dim=32", "depth=1", "heads=2"]
TORCHRUN = {
    "torchrun --nproc_per_node 8 -m anyformer train --preset small batch_size=256",
    "torchrun --nproc_per_node 2 -m anyformer train --preset tiny device=cpu",
}


def _commands(text: str, fence: str) -> list[list[str]]:
    """The commands of the text's code blocks, as the shell splits them (comments dropped)."""
    lines = []
    for block in re.findall(rf"```{fence}\n(.*?)```", text, flags=re.S):
        lines += [shlex.split(line, comments=True) for line in block.splitlines()]
    return [line for line in lines if line]


def _toml_block() -> str:
    (block,) = re.findall(r"```toml\n(.*?)```", SECTION, flags=re.S)
    return block


def test_the_readme_shows_the_commands_this_test_runs():
    section = _commands(SECTION, "bash")
    assert {" ".join(c) for c in section if c[0] == "torchrun"} == TORCHRUN
    assert len([c for c in section if c[0] == "anyformer"]) == 12
    assert len([c for c in _commands(QUICK_RUN, "bash") if c[0] == ".venv/bin/anyformer"]) == 6


def test_every_command_line_command_of_the_readme_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    project = tmp_path / "home" / "src" / "myproject"
    project.mkdir(parents=True)
    for i in range(3):
        (project / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 200)
    Path("notes.txt").write_text("Notes about parsing and stacks.\n" * 300)
    Path("run.toml").write_text(_toml_block())
    section = [c for c in _commands(SECTION, "bash") if c[0] == "anyformer"]
    quick = [c for c in _commands(QUICK_RUN, "bash") if c[0] == ".venv/bin/anyformer"]
    steps_done = 2
    for line in section + quick:
        words = [os.path.expanduser(w) for w in line[1:]]
        if words[0] == "train" and "--list-keys" not in words:
            if "--resume" in words:  # trains on: one step more than the run has done
                steps_done += 1
                words += [*FAST, f"steps={steps_done}"]
            else:
                words += [*FAST, "steps=2"]
        assert main(words) == 0, line
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err, line
    assert os.path.islink("runs/latest") and Path("runs/mine/loss.png").is_file()
