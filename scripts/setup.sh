#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv in the repository root and install anyformer
# into it, editable, with the extras named by the first argument (comma-separated, e.g.
# `bash scripts/setup.sh test,docs`; none by default: what `anyformer train` needs).
# scripts/main.sh installs no extra, scripts/test.sh the test and docs extras.
#
# Versions: every package is installed under constraints.txt (pinned versions, the ones CI
# tests; scripts/update-constraints.sh refreshes it), so a new release elsewhere cannot change
# what CI runs.
#
# Fast when nothing changed: a stamp in .venv records what was installed (pyproject.toml,
# constraints.txt, the torch pin, the interpreter) and which extras; while it matches, the
# extras asked for were installed and anyformer is importable, nothing runs pip. A fresh clone,
# an edited pyproject.toml or constraints.txt or another TORCH_SPEC installs again; an extra not
# installed yet is added (main.sh then test.sh installs the test extras once; test.sh then
# main.sh installs nothing).
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
CONSTRAINTS="$ROOT/constraints.txt"

if [ ! -f "$CONSTRAINTS" ]; then
    echo "[setup] error: $CONSTRAINTS is missing (scripts/update-constraints.sh makes it)" >&2
    exit 1
fi

# the extras as a sorted, comma-separated list without duplicates ("" for none)
normalise() { tr ', ' '\n\n' <<<"$*" | sed '/^$/d' | sort -u | paste -sd, -; }
WANTED="$(normalise "${1:-}")"

wanted_stamp() {
    { cat pyproject.toml "$CONSTRAINTS"; echo "$TORCH_SPEC"; "$VPY" -c 'import sys; print(sys.version)'; } | cksum
}

installed() {
    "$VPY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('anyformer') is None or u.find_spec('torch') is None)" 2>/dev/null
}

# the extras the stamp records, when the rest of it matches this checkout; else fails
stamped_extras() {
    [ -x "$VPY" ] && [ -f "$STAMP" ] && [ "$(head -n 1 "$STAMP")" = "$(wanted_stamp)" ] && installed \
        && sed -n 's/^extras: *//p' "$STAMP"
}

if HAVE="$(stamped_extras)"; then
    MISSING="$(comm -13 <(tr , '\n' <<<"$HAVE" | sed '/^$/d') <(tr , '\n' <<<"$WANTED" | sed '/^$/d') | paste -sd, -)"
    if [ -z "$MISSING" ]; then
        echo "[setup] .venv is up to date" >&2
        exit 0
    fi
    PIP=("$VPY" -m pip --disable-pip-version-check)
    echo "[setup] pip install -e .[$MISSING]" >&2
    "${PIP[@]}" install -q -c "$CONSTRAINTS" -e ".[$MISSING]"
    { wanted_stamp; echo "extras: $(normalise "$HAVE,$WANTED")"; } >"$STAMP"
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
"${PIP[@]}" install -q -c "$CONSTRAINTS" "$TORCH_SPEC"
TARGET="."
[ -n "$WANTED" ] && TARGET=".[$WANTED]"
echo "[setup] pip install -e $TARGET" >&2
"${PIP[@]}" install -q -c "$CONSTRAINTS" -e "$TARGET"
{ wanted_stamp; echo "extras: $WANTED"; } >"$STAMP"
echo "[setup] ready: $("$VPY" -c 'import anyformer, torch; print("anyformer", anyformer.__version__, "| torch", torch.__version__)')" >&2
