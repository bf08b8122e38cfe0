#!/usr/bin/env bash
# The README's start command. Installs sdweb (NumPy and Pillow are its only runtime dependencies)
# and shows the command line. The browser page arrives with issue 4 and will be served from here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e '.[cli]'
sdweb --help
