#!/usr/bin/env python3
"""`npm run build`: the page as static files in dist/, for any static file host (no server code).

    python scripts/build.py [--out dist]

dist/ holds web/ as it is served: index.html and the page's modules, the service worker and web
app manifest, vendored Pyodide and the sdweb wheel (vendored and built first when missing or out of
date, as scripts/vendor_pyodide.py does). A host needs nothing but to serve the files: .wasm as
application/wasm and .js/.mjs as JavaScript, which every common server does. Without the
cross-origin isolation headers a host may not send, the page still works; sw.js adds the headers
from the second visit on (see web/sw.js), which makes Cancel stop between steps rather than restart
Python. The dev server's extras (./weights/ served as a Hub at /hub) are not part of a build.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import vendor_pyodide  # noqa: E402


def build(out: Path) -> Path:
    vendor_pyodide.vendor_core()
    vendor_pyodide.vendor_wheels()
    vendor_pyodide.vendor_hash_wasm()
    vendor_pyodide.build_sdweb_wheel()
    problems = vendor_pyodide.check()
    if problems:
        raise SystemExit(f"build: error: {problems[0]}")
    out = out.resolve()
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ROOT / "web", tmp, ignore=shutil.ignore_patterns("__pycache__", "*.part"))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"build: wrote {out} ({size / 1e6:.1f} MB; serve it with any static file server)", file=sys.stderr)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default dist/)")
    build(Path(ap.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
