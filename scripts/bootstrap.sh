#!/usr/bin/env bash
# Create ./.venv (if missing) and install dpnbids with its pinned dependencies.
# Idempotent: a second call only re-installs dpnbids itself (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.dpnbids-lock.sha256
want=$(sha256sum requirements.lock | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements.lock
    echo "$want" > "$stamp"
fi
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
