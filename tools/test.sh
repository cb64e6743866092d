#!/usr/bin/env bash
# Set up (tools/bootstrap.sh), lint (ruff), build the manual (warnings are errors) and run
# every test tier, slow and acceptance tests included (-m "" overrides pyproject's fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TF_CPP_MIN_LOG_LEVEL=3
# Test files run side by side in DPN_TEST_WORKERS processes (pytest-xdist; one file stays on one
# worker, so a module's cohort fixture is built once). Most tests are single-threaded Python or
# wait on subprocesses, so two workers shorten CI on 2 cores; DPN_TEST_WORKERS=0 runs serially.
workers="${DPN_TEST_WORKERS:-2}"
exec .venv/bin/python -m pytest tests -q -m "" --durations=25 -n "$workers" --dist loadfile \
    --no-loadscope-reorder "$@"
