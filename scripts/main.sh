#!/usr/bin/env bash
# Set up the environment, then train a tiny byte-level decoder on the built-in corpus and
# report validation bits per byte before/after training plus a sample.
# Arguments are passed through to `python -m anyformer.cli.quickstart` (try --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python -m anyformer.cli.quickstart "$@"
