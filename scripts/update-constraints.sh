#!/usr/bin/env bash
# Regenerate constraints.txt, the pinned versions that scripts/setup.sh installs with `-c`.
#
# Makes a fresh venv in a temporary folder with the interpreter PYTHON (default python3),
# installs TORCH_SPEC (default torch==2.13.0, as setup.sh) and then anyformer with every extra
# (test, docs, bench) at the newest versions pyproject.toml's bounds allow, and writes what
# `pip freeze` reports (less anyformer and torch, which setup.sh pins) to constraints.txt. Each
# pin carries the interpreter's version as a marker (`; python_version == "3.11"`): pins are
# valid for the Python they were resolved with, and lines for other Pythons are kept, so
# `PYTHON=python3.12 bash scripts/update-constraints.sh` adds 3.12's. On a Python without pins,
# pip resolves within pyproject.toml's bounds.
#
# Then run `bash scripts/test.sh` (it reinstalls, since constraints.txt changed) and commit
# constraints.txt with the change that needed it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
OUT="$ROOT/constraints.txt"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)
echo "[constraints] pip install $TORCH_SPEC" >&2
"${PIP[@]}" install -q "$TORCH_SPEC"
echo "[constraints] pip install -e .[test,docs,bench]" >&2
"${PIP[@]}" install -q -e "$ROOT[test,docs,bench]"

VERSION="$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
MARKER="; python_version == \"$VERSION\""
{
    echo "# Pinned versions of everything scripts/setup.sh installs besides anyformer and torch"
    echo "# (torch is pinned by setup.sh's TORCH_SPEC). Made by scripts/update-constraints.sh:"
    echo "# edit pyproject.toml's bounds, then rerun it; do not edit the pins by hand."
    [ -f "$OUT" ] && grep -v '^#' "$OUT" | grep -vF "$MARKER" | sed '/^$/d' || true
    "${PIP[@]}" freeze --exclude-editable --exclude anyformer --exclude torch \
        | grep -E '^[A-Za-z0-9_.-]+==' | sed "s/\$/ $MARKER/"
} >"$TMP/constraints.txt"
{ head -n 3 "$TMP/constraints.txt"; tail -n +4 "$TMP/constraints.txt" | sort -f; } >"$OUT"
echo "[constraints] wrote $(grep -vc '^#' "$OUT") pins to $OUT (Python $VERSION)" >&2
