#!/usr/bin/env bash
# The README's test command: installs what the tests need (pip: sdweb + its [test] extra, which pins
# the CPU torch wheel), builds the tiny test models, and runs the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
"$PY" scripts/make_test_models.py tests/.models
exec "$PY" -m pytest -q "$@"
