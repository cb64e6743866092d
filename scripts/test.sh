#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m pytest tests -q --durations=25 "$@"
