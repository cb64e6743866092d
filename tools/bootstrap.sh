#!/usr/bin/env bash
# Create ./.venv (if missing) and install dpnbids with its locked, hash-checked dependencies:
# requirements-dev.lock (runtime + tests, docs, lint; a superset of requirements.lock, at the
# same versions). Idempotent: the locks are installed again only when one of them changed; a
# second call only re-installs dpnbids itself (editable). PyTorch is in neither lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.dpnbids-lock.sha256
want=$(cat requirements.lock requirements-dev.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet --require-hashes -r requirements-dev.lock
    echo "$want" > "$stamp"
fi
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
