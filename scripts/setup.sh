#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv in the repository root and install
# anyformer into it, editable, with its test extras. Safe to run repeatedly: a second run
# reuses .venv and skips the editable install while pyproject.toml is unchanged.
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
STAMP="$VENV/.anyformer-installed"

if [ -x "$VPY" ] && "$VPY" -c "import sys" >/dev/null 2>&1; then
    echo "[setup] reusing $VENV" >&2
else
    if ! "$PYTHON" -c "import sys; sys.exit(sys.version_info < (3, 10))" 2>/dev/null; then
        echo "[setup] error: $PYTHON must be Python >= 3.10 (set PYTHON=...)" >&2
        exit 1
    fi
    echo "[setup] creating $VENV" >&2
    "$PYTHON" -m venv --clear "$VENV"
    rm -f "$STAMP"
fi

PIP=("$VPY" -m pip --disable-pip-version-check)

echo "[setup] pip install $TORCH_SPEC" >&2
"${PIP[@]}" install -q "$TORCH_SPEC"

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && "$VPY" -c "import anyformer" >/dev/null 2>&1; then
    echo "[setup] anyformer already installed (editable)" >&2
else
    echo "[setup] pip install -e .[test]" >&2
    "${PIP[@]}" install -q -e ".[test]"
    touch "$STAMP"
fi
echo "[setup] ready: $("$VPY" -c 'import anyformer, torch; print("anyformer", anyformer.__version__, "| torch", torch.__version__)')" >&2
