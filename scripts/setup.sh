#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv in the repository root and install
# anyformer into it, editable, with its test extras.
#
# Fast when nothing changed: a stamp in .venv records what was installed (pyproject.toml,
# the torch pin, the interpreter); while it matches and anyformer is importable, nothing
# runs pip. A fresh clone, an edited pyproject.toml or another TORCH_SPEC installs again.
#
# torch is installed FIRST and pinned: pip then resolves it to the build for this machine
# (the CPU build where there is no CUDA), whereas an unpinned torch pulled in through the
# project's dependencies could fetch a multi-GB CUDA build.
#
# Environment overrides: PYTHON (interpreter that creates .venv, default python3),
# TORCH_SPEC (default torch==2.13.0).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.anyformer-setup"

wanted_stamp() {
    { cat pyproject.toml; echo "$TORCH_SPEC"; "$VPY" -c 'import sys; print(sys.version)'; } | cksum
}

installed() {
    "$VPY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('anyformer') is None or u.find_spec('torch') is None)" 2>/dev/null
}

if [ -x "$VPY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(wanted_stamp)" ] && installed; then
    echo "[setup] .venv is up to date" >&2
    exit 0
fi

if [ -x "$VPY" ] && "$VPY" -c "import sys" >/dev/null 2>&1; then
    echo "[setup] reusing $VENV" >&2
else
    if ! "$PYTHON" -c "import sys; sys.exit(sys.version_info < (3, 10))" 2>/dev/null; then
        echo "[setup] error: $PYTHON must be Python >= 3.10 (set PYTHON=...)" >&2
        exit 1
    fi
    echo "[setup] creating $VENV" >&2
    "$PYTHON" -m venv --clear "$VENV"
fi
rm -f "$STAMP"

PIP=("$VPY" -m pip --disable-pip-version-check)
echo "[setup] pip install $TORCH_SPEC" >&2
"${PIP[@]}" install -q "$TORCH_SPEC"
echo "[setup] pip install -e .[test]" >&2
"${PIP[@]}" install -q -e ".[test]"
wanted_stamp >"$STAMP"
echo "[setup] ready: $("$VPY" -c 'import anyformer, torch; print("anyformer", anyformer.__version__, "| torch", torch.__version__)')" >&2
