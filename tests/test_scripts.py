"""scripts/setup.sh installs once and skips when nothing changed, the extras only where asked
for; scripts/main.sh runs `anyformer train`; scripts/test.sh type-checks, builds the docs and runs
pytest.

The scripts run in a copy of the repository whose .venv/bin/python is a stub: it records how it
was called and stands in for pip, so nothing is installed and no network is needed.
"""

from __future__ import annotations

import os
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
  *"-m mypy"*) exit "${{STUB_MYPY_RC:-0}}" ;;
  *"-m mkdocs"*|*"-m pytest"*) exit 0 ;;
  *) exec "{python}" "$@" ;;
esac
"""


@pytest.fixture
def repo(tmp_path):
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(ROOT / "constraints.txt", tmp_path / "constraints.txt")
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


def run_script(repo: Path, name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(repo / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def pip_calls(repo: Path) -> list[str]:
    log = repo / "calls.log"
    return (
        [line for line in log.read_text().splitlines() if "-m pip" in line] if log.exists() else []
    )


def installs(repo: Path) -> list[str]:
    """What each pip call installed, after its constraints option (the x-transformers 2.x
    oracle, installed into its own folder without dependencies: "xt2 " and its pins)."""
    prefix = f"install -q -c {repo / 'constraints.txt'} "
    xt2 = f"install -q --no-deps --target {repo / '.venv' / 'xt2'} "
    return ["xt2 " + c.split(xt2)[1] if xt2 in c else c.split(prefix)[1] for c in pip_calls(repo)]


def test_setup_installs_once_then_skips(repo):
    first = run_script(repo, "setup.sh")
    assert first.returncode == 0, first.stderr
    # what the main job needs: anyformer and its dependencies, no extra, under the pins
    assert installs(repo) == ["torch==2.13.0", "-e ."]
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
    with open(repo / "constraints.txt", "a") as f:
        f.write("tqdm==4.70.0\n")  # a new pin
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


def test_extras_are_added_once_and_kept(repo):
    assert run_script(repo, "setup.sh").returncode == 0  # main.sh's setup
    (repo / "calls.log").unlink()
    test = run_script(repo, "setup.sh", "test,docs")  # then test.sh's: only the extras
    assert test.returncode == 0, test.stderr
    assert installs(repo) == ["-e .[docs,test]", "xt2 " + XT2_PINS]
    assert (repo / ".venv" / ".anyformer-setup").read_text().splitlines()[1] == "extras: docs,test"
    (repo / "calls.log").unlink()
    for extras in ("", "test", "docs,test", "test, docs"):  # main.sh after test.sh, and again
        again = run_script(repo, "setup.sh", extras)
        assert (again.returncode, again.stderr) == (0, "[setup] .venv is up to date\n")
    assert pip_calls(repo) == []


#: the x-transformers 2.x oracle and its pure-Python dependencies, as pinned (tests/xt2.py reads it)
XT2_PINS = (
    "x-transformers==2.31.10 einx==0.4.3 loguru==0.7.3 frozendict==2.5.1 torch-einops-utils==0.2.0"
)


def test_the_xt2_oracle_comes_with_the_test_extra_only(repo):
    assert run_script(repo, "setup.sh").returncode == 0  # no extras: no oracle
    assert not any("xt2" in c for c in installs(repo))
    assert run_script(repo, "setup.sh", "docs").returncode == 0
    assert not any("xt2" in c for c in installs(repo))
    assert run_script(repo, "setup.sh", "test").returncode == 0
    assert installs(repo)[-1] == "xt2 " + XT2_PINS
    assert (repo / ".venv" / "xt2" / ".pins").read_text() == XT2_PINS + "\n"
    (repo / "calls.log").unlink()
    assert run_script(repo, "setup.sh", "test").returncode == 0  # pins unchanged: nothing runs
    assert pip_calls(repo) == []


def test_setup_refuses_to_run_without_the_constraints_file(repo):
    (repo / "constraints.txt").unlink()
    proc = run_script(repo, "setup.sh")
    assert proc.returncode == 1
    assert "constraints.txt is missing" in proc.stderr
    assert pip_calls(repo) == []


def _checks(repo: Path) -> list[str]:
    calls = (repo / "calls.log").read_text().splitlines()
    return [c for c in calls if c.startswith(("-m mypy", "-m mkdocs", "-m pytest"))]


def test_test_sh_type_checks_builds_the_docs_then_runs_pytest(repo):
    proc = run_script(repo, "test.sh")
    assert proc.returncode == 0, proc.stderr
    assert installs(repo) == ["torch==2.13.0", "-e .[docs,test]", "xt2 " + XT2_PINS]
    assert _checks(repo) == [
        "-m mypy",
        "-m mkdocs build --strict --quiet",
        "-m pytest -p no:cacheprovider",
    ]


def test_test_sh_fails_on_a_type_error_after_running_every_step(repo):
    proc = run_script(repo, "test.sh", STUB_MYPY_RC="1")
    assert proc.returncode == 1
    assert len(_checks(repo)) == 3  # the docs and the tests still ran
    assert proc.stderr.endswith("[test] failed: type check (python -m mypy)\n")


def test_test_sh_with_arguments_runs_only_those_tests(repo):
    proc = run_script(repo, "test.sh", "tests/test_corpus.py", "-x")
    assert proc.returncode == 0, proc.stderr
    assert _checks(repo) == ["-m pytest -p no:cacheprovider tests/test_corpus.py -x"]


VENV_STUB = """#!/usr/bin/env bash
# stands in for the interpreter of the temporary venv update-constraints.sh makes
echo "$*" >> "{log}"
case "$*" in
  *"-m pip"*"freeze"*) printf 'tqdm==4.70.1\\n# Editable install with no version control\\nAnnotated==0.1\\n' ;;
  *"-m pip"*) exit 0 ;;
  *"sys.version_info"*) echo 3.11 ;;
esac
"""

PYTHON_STUB = """#!/usr/bin/env bash
# stands in for PYTHON: `-m venv DIR` makes DIR/bin/python the stub above
mkdir -p "$3/bin"
cat > "$3/bin/python" <<'STUB'
{venv_stub}STUB
chmod +x "$3/bin/python"
"""


def test_update_constraints_pins_what_pip_freeze_reports_for_this_python(repo):
    log = repo / "venv.log"
    python = repo / "python-stub"
    python.write_text(PYTHON_STUB.format(venv_stub=VENV_STUB.format(log=log)))
    python.chmod(0o755)
    (repo / "constraints.txt").write_text(
        "# old header\n"
        'numpy==2.2.6 ; python_version == "3.10"\n'  # another Python's pin: kept
        'tqdm==4.60.0 ; python_version == "3.11"\n'  # this Python's old pin: replaced
    )
    proc = run_script(repo, "update-constraints.sh", PYTHON=str(python))
    assert proc.returncode == 0, proc.stderr
    lines = (repo / "constraints.txt").read_text().splitlines()
    assert len([line for line in lines if line.startswith("#")]) == 3
    assert [line for line in lines if not line.startswith("#")] == [
        'Annotated==0.1 ; python_version == "3.11"',
        'numpy==2.2.6 ; python_version == "3.10"',
        'tqdm==4.70.1 ; python_version == "3.11"',
    ]
    calls = log.read_text().splitlines()
    installs = [c.split(" install -q ")[1] for c in calls if " install -q " in c]
    assert installs == ["torch==2.13.0", f"-e {repo}[test,docs,bench]"]
    freeze = next(c for c in calls if "freeze" in c)
    assert freeze.endswith("freeze --exclude-editable --exclude anyformer --exclude torch")
