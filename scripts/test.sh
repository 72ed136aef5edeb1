#!/usr/bin/env bash
# Set up the environment (with the test and docs extras), then check the package:
#   1. the type check: `python -m mypy` over the whole package ([tool.mypy] in pyproject.toml);
#   2. the API reference site: `mkdocs build --strict` (warnings are errors) into site/;
#   3. the test suite: pytest.
# Every step runs; the script fails if any failed. Arguments are passed through to pytest and
# then only pytest runs (a chosen subset while working), e.g.
# `bash scripts/test.sh tests/test_corpus.py -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh test,docs
# the same hypothesis examples on every run (see tests/conftest.py)
export ANYFORMER_HYPOTHESIS="${ANYFORMER_HYPOTHESIS:-fixed}"
# pyproject.toml already adds -q (addopts); a second -q would hide the summary line.
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
fi
failed=()
echo "[test] type check: python -m mypy" >&2
.venv/bin/python -m mypy || failed+=("type check (python -m mypy)")
echo "[test] API reference: mkdocs build --strict (into site/)" >&2
.venv/bin/python -m mkdocs build --strict --quiet || failed+=("docs (mkdocs build --strict)")
.venv/bin/python -m pytest -p no:cacheprovider || failed+=("tests (pytest)")
if [ "${#failed[@]}" -gt 0 ]; then
    printf '[test] failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
