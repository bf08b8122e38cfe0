#!/usr/bin/env bash
# The README's test command: installs what the tests need (pip: sdweb + its [test] extra, which pins
# the CPU torch wheel; npm: the locked devDependencies), builds the tiny test models, runs the page's
# JS units under Node's own test runner, then the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# lavapipe, a CPU Vulkan driver, so the WebGPU backend's tests have an adapter (CI runs as root)
# and Debian's chromium for the page's end-to-end tests (headless, SwiftShader WebGPU)
for pkg in mesa-vulkan-drivers chromium; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq "$pkg" >/dev/null
    fi
done
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
# the page's tests: Playwright drives that chromium; serve.py is a starlette app under uvicorn
"$PY" -m pip install -q --disable-pip-version-check 'playwright>=1.40' 'uvicorn>=0.20' 'starlette>=0.39'
# npm's locked devDependencies: pyodide (vendored below) and fake-indexeddb (the JS tests' IndexedDB)
npm ci --no-audit --no-fund --loglevel=error
"$PY" scripts/make_test_models.py tests/.models
"$PY" scripts/vendor_pyodide.py  # Pyodide 0.27.7 + numpy/pillow wheels (sha256-checked) + the sdweb wheel
# web/hub.js and web/store.js in Node (hub.js asks this checkout's Python planner, run with $PY)
PYTHON="$PY" node --test tests/js/
exec "$PY" -m pytest -q "$@"
