#!/usr/bin/env bash
# Set up the environment, then run the test suite. Arguments are passed through to pytest,
# e.g. `bash scripts/test.sh tests/test_corpus.py -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# the same hypothesis examples on every run (see tests/conftest.py)
export ANYFORMER_HYPOTHESIS="${ANYFORMER_HYPOTHESIS:-fixed}"
# pyproject.toml already adds -q (addopts); a second -q would hide the summary line.
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
