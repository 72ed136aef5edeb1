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

# x-transformers 2.x, the oracle of the later keywords (tests/xt2.py imports it beside 1.28.2):
# installed with the test extra into its own folder, .venv/xt2, without dependencies (it needs
# only these pure-Python packages beside what the test extra installs), pinned.
XT2_DIR="$VENV/xt2"
XT2_PINS=(x-transformers==2.31.10 einx==0.4.3 loguru==0.7.3 frozendict==2.5.1 torch-einops-utils==0.2.0)
ensure_xt2() {
    case ",$1," in *,test,*) ;; *) return 0 ;; esac
    [ -f "$XT2_DIR/.pins" ] && [ "$(cat "$XT2_DIR/.pins")" = "${XT2_PINS[*]}" ] && return 0
    echo "[setup] pip install --target .venv/xt2 ${XT2_PINS[*]}" >&2
    rm -rf "$XT2_DIR"
    "$VPY" -m pip --disable-pip-version-check install -q --no-deps --target "$XT2_DIR" "${XT2_PINS[@]}"
    mkdir -p "$XT2_DIR"
    echo "${XT2_PINS[*]}" >"$XT2_DIR/.pins"
}

if HAVE="$(stamped_extras)"; then
    MISSING="$(comm -13 <(tr , '\n' <<<"$HAVE" | sed '/^$/d') <(tr , '\n' <<<"$WANTED" | sed '/^$/d') | paste -sd, -)"
    if [ -z "$MISSING" ]; then
        ensure_xt2 "$HAVE"
        echo "[setup] .venv is up to date" >&2
        exit 0
    fi
    PIP=("$VPY" -m pip --disable-pip-version-check)
    echo "[setup] pip install -e .[$MISSING]" >&2
    "${PIP[@]}" install -q -c "$CONSTRAINTS" -e ".[$MISSING]"
    { wanted_stamp; echo "extras: $(normalise "$HAVE,$WANTED")"; } >"$STAMP"
    ensure_xt2 "$(normalise "$HAVE,$WANTED")"
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
ensure_xt2 "$WANTED"
echo "[setup] ready: $("$VPY" -c 'import anyformer, torch; print("anyformer", anyformer.__version__, "| torch", torch.__version__)')" >&2
