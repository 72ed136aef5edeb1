#!/usr/bin/env bash
# Set up the environment (fast when nothing changed), then run the quick start:
# `anyformer train` with no arguments trains the default byte-level model on the built-in
# corpus into runs/<timestamp> (runs/latest points at it) and prints validation bits per byte,
# the run folder and a sample. Arguments are passed on to `anyformer train`
# (e.g. `bash scripts/main.sh steps=200`, or `bash scripts/main.sh --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# Threads that wait for work sleep instead of spinning: on a machine whose cores are also busy
# with other work, spinning threads made each step up to 10x slower (2 cores, 2 threads).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python -m anyformer train "$@"
