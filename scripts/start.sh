#!/usr/bin/env bash
# The README's start command: installs what is missing, vendors Pyodide once, and serves the page on
# http://127.0.0.1:8000 (arguments go to scripts/serve.py: --host, --port, --weights).
# Idempotent, and offline once everything is installed and vendored: each step runs only when
# what it provides is missing (the sdweb wheel is rebuilt when py/sdweb changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
has() { "$PY" -c "$1" >/dev/null 2>&1; }
pipi() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

# sdweb itself (the CLI: `sdweb generate`, `sdweb download` to prefetch into ./weights/)
has "import sdweb.cli, tqdm" || pipi -e '.[cli]'
# the server: starlette (>= 0.39 answers HTTP Range requests) under uvicorn
has "import uvicorn, starlette; assert tuple(map(int, starlette.__version__.split('.')[:2])) >= (0, 39)" \
    || pipi 'uvicorn>=0.20' 'starlette>=0.39'
# Pyodide 0.27.7 (npm) + its numpy/pillow wheels, sha256-checked against pyodide-lock.json
if "$PY" scripts/vendor_pyodide.py --check 2>/dev/null; then
    "$PY" scripts/vendor_pyodide.py --wheel
else
    "$PY" scripts/vendor_pyodide.py
fi
exec "$PY" scripts/serve.py "$@"
