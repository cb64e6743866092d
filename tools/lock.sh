#!/usr/bin/env bash
# Regenerate the hashed locks from pyproject.toml with uv (Python 3.11, Linux x86_64):
#   requirements.lock      runtime dependencies (what the image and `pip install .` need)
#   requirements-dev.lock  runtime + the test, docs, lint and lock extras, at the same versions
# uv keeps the versions already in a lock; `bash tools/lock.sh --upgrade` moves them forward.
# Never edit the locks by hand or from a `pip freeze`.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-.venv/bin/uv}"
common=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
        --annotation-style line --custom-compile-command "bash tools/lock.sh")
"$UV" pip compile pyproject.toml "${common[@]}" "$@" -o requirements.lock
"$UV" pip compile pyproject.toml "${common[@]}" "$@" --extra test --extra docs --extra lint \
    --extra lock -c requirements.lock -o requirements-dev.lock
