#!/usr/bin/env bash
# Set up (tools/bootstrap.sh), lint (ruff), build the manual (warnings are errors) and run
# every test tier, slow and acceptance tests included (-m "" overrides pyproject's fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m pytest tests -q -m "" --durations=25 "$@"
